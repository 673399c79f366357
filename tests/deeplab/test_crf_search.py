"""tools/crf_search.py and deeplab.crf.search: grids, subset, resume, and a search on a tiny generated set."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

import densecrf
import deeplab.crf.search as search
from deeplab import USER_ERRORS
from deeplab.eval import ConfusionMatrix
from deeplab.labels import write_label
from deeplab.extract.scoremaps import save_scores
from densecrf import CRFParams


def load_tool():
    from deeplab.commands import crf_search

    return crf_search


def test_parse_grid():
    assert search.parse_grid("50:10:100") == [50, 60, 70, 80, 90, 100]
    assert search.parse_grid("5:10") == [5, 6, 7, 8, 9, 10]
    assert search.parse_grid("3,1.5,3") == [1.5, 3]
    assert search.parse_grid("0.5:0.25:1") == [0.5, 0.75, 1.0]
    for bad in ("5:0:10", "a,b", "10:5", ""):
        with pytest.raises(USER_ERRORS):
            search.parse_grid(bad)


def test_paper_grid_and_fine_grid():
    coarse = {k: search.parse_grid(v) for k, v in search.COARSE.items()}
    assert len(search.grid_settings(CRFParams(), coarse)) == 6 * 6 * 8
    best = CRFParams(bi_w=5, bi_xy_std=60, bi_rgb_std=3)
    fine = search.fine_axes(best, coarse, div=2)
    assert fine == {"bi_w": [4, 4.5, 5, 5.5, 6], "bi_xy_std": [50, 55, 60, 65, 70],
                    "bi_rgb_std": [2, 2.5, 3, 3.5, 4]}
    assert search.fine_axes(best, {"bi_w": [5], "bi_xy_std": [30, 60], "bi_rgb_std": [3, 4]}, div=1) == \
        {"bi_w": [5], "bi_xy_std": [30, 60, 90], "bi_rgb_std": [2, 3, 4]}


def test_subset_is_seeded_and_in_list_order():
    ids = [f"i{k:03d}" for k in range(50)]
    a = search.choose_subset(ids, 10, seed=1)
    assert a == search.choose_subset(ids, 10, seed=1) and len(a) == 10 and a == sorted(a)
    assert a != search.choose_subset(ids, 10, seed=2)
    assert search.choose_subset(ids, 100, seed=1) == ids


def make_set(root, n=5, h=48, w=64):
    """Images of two or three flat colour regions with noise, their labels, and coarse shifted scores."""
    rng = np.random.default_rng(11)
    colours = np.array([(30, 30, 30), (200, 60, 50), (60, 160, 220)], np.int64)
    for sub in ("images", "scores", "labels"):
        (root / sub).mkdir()
    ids = []
    for k in range(n):
        label = np.zeros((h, w), np.uint8)
        x0, y0 = 16 + 4 * k, 12 + 3 * k
        label[:, x0:] = 1
        label[y0:, x0 + 12:] = 2
        rgb = (colours[label] + rng.integers(-10, 11, (h, w, 3))).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"s{k}.png"), rgb[:, :, ::-1])
        gt = label.copy()
        gt[:, x0 - 1:x0 + 1] = 255  # a void band, as VOC has
        write_label(root / "labels" / f"s{k}.png", gt)
        shifted = np.roll(label, 6, axis=1)
        sh, sw = (h - 1) // 8 + 2, (w - 1) // 8 + 2
        small = cv2.resize(shifted, (sw, sh), interpolation=cv2.INTER_AREA)
        raw = np.stack([(small == c) * 3.0 for c in range(3)]).astype(np.float32)
        raw += rng.normal(0, 0.7, raw.shape).astype(np.float32)
        save_scores(root / "scores" / f"s{k}.npy", raw, h, w)
        ids.append(f"s{k}")
    (root / "list.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("0 a 0 0 0\n1 b 128 0 0\n2 c 0 128 0\n255 void 255 255 255\n")
    return ids


def independent_miou(root, ids, params):
    cm = ConfusionMatrix(3)
    from deeplab.labels import read_label
    from deeplab.crf.io import load_pair

    for i in ids:
        image, sm = load_pair(str(root / "images"), str(root / "scores"), i)
        cm.update(read_label(root / "labels" / f"{i}.png"), densecrf.refine(image, sm.scores, params))
    return cm.compute()["mean_iou"]


def test_search_tiny_set_beats_default_and_resumes(tmp_path, capsys, monkeypatch):
    ids = make_set(tmp_path)
    tool = load_tool()
    argv = ["--images", str(tmp_path / "images"), "--scores", str(tmp_path / "scores"),
            "--labels", str(tmp_path / "labels"), "--list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "s"),
            "--n", "4", "--seed", "3", "--classes", str(tmp_path / "classes.txt"), "--bi-w", "3,8",
            "--bi-xy-std", "10,40", "--bi-rgb-std", "4,12", "--fine-div", "1", "--iters", "5", "-j", "2", "--quiet"]
    assert tool.main(argv) == 0
    out = capsys.readouterr().out
    subset = (tmp_path / "s" / "subset.txt").read_text().split()
    assert subset == search.choose_subset(ids, 4, 3)

    best = json.loads((tmp_path / "s" / "best.json").read_text())
    default = CRFParams(iters=5)
    default_miou = independent_miou(tmp_path, subset, default)
    assert best["default_mean_iou"] == pytest.approx(default_miou, abs=1e-9)
    assert best["mean_iou"] >= default_miou
    assert best["mean_iou"] > best["no_crf_mean_iou"]  # the CRF helps on these shifted scores
    p = CRFParams.from_dict(best)
    assert independent_miou(tmp_path, subset, p) == pytest.approx(best["mean_iou"], abs=1e-9)
    assert f"--bi-w {p.bi_w:g} --bi-xy-std {p.bi_xy_std:g} --bi-rgb-std {p.bi_rgb_std:g}" in out

    with open(tmp_path / "s" / "search.csv") as f:
        rows = list(csv.DictReader(f))
    stages = [r["stage"] for r in rows]
    assert stages.count("reference") == 2 and stages.count("coarse") == 8 and stages.count("fine") > 0
    grid = [r for r in rows if r["stage"] != "reference"]
    assert max(float(r["mean_iou"]) for r in grid) == pytest.approx(best["mean_iou"], abs=1e-6)
    assert (tmp_path / "s" / "heatmap.png").stat().st_size > 1000

    # A rerun resumes from the CSV: nothing is evaluated again.
    before = (tmp_path / "s" / "search.csv").read_bytes()

    def no_eval(*a, **k):
        raise AssertionError("evaluated a setting that was already in the CSV")

    monkeypatch.setattr(search, "evaluate", no_eval)
    assert tool.main(argv) == 0
    assert (tmp_path / "s" / "search.csv").read_bytes() == before
    # Another subset is other inputs: the search starts over, with a note.
    monkeypatch.undo()
    capsys.readouterr()
    assert tool.main([*argv[:argv.index("--seed") + 1], "4", *argv[argv.index("--seed") + 2:]]) == 0
    assert "was made from other inputs (subset: " in capsys.readouterr().err
    assert (tmp_path / "s" / "subset.txt").read_text().split() == search.choose_subset(ids, 4, 4)


def test_search_reports_missing_ground_truth(tmp_path):
    make_set(tmp_path, n=2)
    (tmp_path / "labels" / "s1.png").unlink()
    tool = load_tool()
    with pytest.raises(USER_ERRORS, match="no ground truth s1.png"):
        tool.main(["--images", str(tmp_path / "images"), "--scores", str(tmp_path / "scores"),
                   "--labels", str(tmp_path / "labels"), "--list", str(tmp_path / "list.txt"),
                   "--out", str(tmp_path / "s"), "--quiet"])



def test_torch_backend_evaluates_a_weight_group_as_one_job(tmp_path, monkeypatch):
    """crf_search --backend torch: settings that differ only in w1/w2 share each image's lattices
    (built once per image and group) and score exactly as evaluating them one by one."""
    import densecrf.torch_backend as tb
    ids = make_set(tmp_path, n=3)
    data = search.SearchData(str(tmp_path / "images"), str(tmp_path / "scores"), str(tmp_path / "labels"),
                             tuple(ids), 3, backend="torch")
    settings = [CRFParams(iters=4, bi_w=w1, pos_w=w2, bi_xy_std=20) for w1 in (2, 5, 9) for w2 in (1, 3)]
    settings.append(CRFParams(iters=4, bi_w=5, bi_xy_std=40))
    groups = search.kernel_groups(settings)
    assert [len(g) for g in groups] == [6, 1]
    built = []
    real = tb.build_kernels
    monkeypatch.setattr(tb, "build_kernels", lambda *a, **k: built.append(1) or real(*a, **k))
    together = [cm.compute()["mean_iou"] for cm in search.evaluate_group(data, groups[0])]
    assert len(built) == len(ids)                     # one lattice build per image for six settings
    alone = [search.evaluate(data, p).compute()["mean_iou"] for p in groups[0]]
    assert together == pytest.approx(alone, abs=1e-12)
    assert len(set(round(v, 9) for v in together)) > 1  # the weights matter on these images


def test_search_cli_with_the_torch_backend(tmp_path):
    ids = make_set(tmp_path, n=3)
    tool = load_tool()
    argv = ["--images", str(tmp_path / "images"), "--scores", str(tmp_path / "scores"),
            "--labels", str(tmp_path / "labels"), "--list", str(tmp_path / "list.txt"), "--out", str(tmp_path / "s"),
            "--n", "3", "--classes", str(tmp_path / "classes.txt"), "--bi-w", "3,8", "--bi-xy-std", "10,40",
            "--bi-rgb-std", "4", "--fine-div", "1", "--iters", "3", "-j", "1", "--quiet", "--backend", "torch"]
    assert tool.main(argv) == 0
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    p = CRFParams.from_dict(best)
    data = search.SearchData(str(tmp_path / "images"), str(tmp_path / "scores"), str(tmp_path / "labels"),
                             tuple(ids), 3, backend="torch")
    assert search.evaluate(data, p).compute()["mean_iou"] == pytest.approx(best["mean_iou"], abs=1e-9)
