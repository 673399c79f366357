"""The HTML report: it parses, every picture it references exists and decodes, parts may be missing."""
from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from deeplab import USER_ERRORS
from deeplab.eval.evaluate import evaluate, write_result
from deeplab.labels import write_label
from deeplab.report.html import build_report, choose_examples

from test_caffelog import LOG


class _Page(HTMLParser):
    """Collects tags, image sources, headings and text; fails on unbalanced structure."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.headings, self.text, self.links = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append((a.get("src", ""), a.get("alt")))
        for key in ("href", "src"):
            if key in a and tag != "img":
                self.links.append(a[key])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("h1", "h2", "h3"):
            self.headings.append(data.strip())
        self.text.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    assert page.startswith("<!DOCTYPE html>")
    for src, alt in p.images:
        assert src.startswith("data:image/png;base64,"), src[:40]  # self-contained: nothing to fetch
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) > 50, alt
    assert p.links == []
    return p


def _experiment(root, with_features=True):
    """A tiny but complete experiment folder (4 images, VOC classes) built with the real stages."""
    rng = np.random.default_rng(0)
    exp, data = root / "exp", root / "data"
    ids = [f"im{k}" for k in range(4)]
    for k, i in enumerate(ids):
        h, w = 40, 56
        gt = np.zeros((h, w), np.uint8)
        gt[10:30, 12 + k:40 + k] = 15
        gt[9, 12:40] = 255
        img = np.full((h, w, 3), 40, np.uint8)
        img[gt == 15] = (200, 150, 120)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        (data / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(data / "images" / f"{i}.jpg")
        write_label(data / "gt" / f"{i}.png", gt)
        dcnn = np.zeros_like(gt)
        dcnn[8:32, 10 + k:42] = 15
        crf = np.where(gt == 255, 0, gt) if k < 2 else np.zeros_like(gt)  # two gains, two failures
        write_label(exp / "res" / "val" / "dcnn" / f"{i}.png", dcnn)
        write_label(exp / "res" / "val" / "crf" / f"{i}.png", crf)
        if with_features:
            from deeplab.extract.scoremaps import save_scores

            small = gt[np.minimum(np.arange(6) * 8, h - 1)][:, np.minimum(np.arange(8) * 8, w - 1)].astype(int)
            small[small == 255] = 0
            sc = np.eye(21, dtype=np.float32)[small].transpose(2, 0, 1) * 4
            save_scores(exp / "features" / "val" / f"{i}.npy", sc, h, w)
    (data / "val.txt").write_text("\n".join(ids) + "\n")
    for m in ("dcnn", "crf"):
        r = evaluate(exp / "res" / "val" / m, data / "gt", ids, 21, trimap_widths=range(1, 6))
        write_result(exp / "res" / "val" / f"eval_{m}.json", r)
    (exp / "log").mkdir()
    (exp / "log" / "train.log").write_text(LOG)
    search = exp / "res" / "val" / "crf_search"
    search.mkdir()
    rows = ["bi_w,bi_xy_std,bi_rgb_std,pos_w,pos_xy_std,mean_iou"]
    rows += [f"{bw},{xy},{rgb},3,3,{0.5 + 0.01 * bw - abs(xy - 50) / 1000:.4f}"
             for bw in (3, 4, 5) for xy in (30, 50, 70) for rgb in (3, 5)]
    (search / "search.csv").write_text("\n".join(rows) + "\n")
    (search / "best.json").write_text(json.dumps({"bi_w": 5, "bi_xy_std": 50, "bi_rgb_std": 3, "pos_w": 3,
                                                  "pos_xy_std": 3, "iters": 3, "mean_iou": 0.55}))
    (exp / "report.json").write_text(json.dumps({"images": "../data/images", "gt": "../data/gt",
                                                 "list": "../data/val.txt", "classes": "voc12"}))
    return exp


def test_full_report_parses_and_embeds_every_picture(tmp_path):
    exp = _experiment(tmp_path)
    p = _parse(build_report(str(exp), title="tiny"))
    alts = [alt for _, alt in p.images]
    assert alts[:4] == ["trimap curves", "CRF search heatmap", "examples", "mean field"]
    assert alts[-1] == "training curves"
    text = " ".join(p.text)
    assert "person" in text and "DCNN+CRF" in text and "bkg" in text
    assert "Mean-field picture skipped" not in text
    assert any("Figure 7" in h for h in p.headings) and any("Figure 2" in h for h in p.headings)
    assert "Training" in p.headings


def test_missing_parts_are_noted_not_fatal(tmp_path):
    exp = tmp_path / "exp"
    write_label(exp / "res" / "val" / "crf" / "a.png", np.zeros((60, 60), np.uint8))
    p = _parse(build_report(str(exp)))
    text = " ".join(p.text)
    assert "No training log" in text and "No eval_*.json" in text
    assert "Not ranked" in text and "No --images" in text
    assert [alt for _, alt in p.images] == ["examples"]
    assert "No score maps" in text
    with pytest.raises(USER_ERRORS, match="not found"):
        build_report(str(tmp_path / "nope"))


def test_choose_examples_gains_then_failures():
    d = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.5, "e": 0.5, "f": 0.5, "g": 0.5, "h": 0.5}
    c = {"a": 0.9, "b": 0.6, "c": 0.5, "d": 0.4, "e": 0.1, "f": 0.7, "g": 0.55, "h": 0.5}
    chosen = choose_examples({"dcnn": d, "crf": c}, list(d), 4)
    # 4 rows: 3 gains by size, 1 failure (the largest loss)
    assert [i for i, _ in chosen] == ["a", "f", "b", "e"]
    assert chosen[0][1] == "gain: CRF +40.0" and chosen[-1][1] == "failure: CRF -40.0"
    assert choose_examples({}, ["x", "y", "z"], 2) == [("x", ""), ("y", "")]


def test_tool_writes_the_page(tmp_path):
    exp = _experiment(tmp_path, with_features=False)
    from deeplab.commands import report as tool

    assert tool.main([str(exp), "--examples", "2", "--set", "val"]) == 0
    p = _parse((exp / "report.html").read_text())
    assert "examples" in [alt for _, alt in p.images]
