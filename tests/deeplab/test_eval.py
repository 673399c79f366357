"""Set-level evaluation: hand-computed confusion matrices and IoUs, ignore, errors, tools/eval.py."""
from __future__ import annotations

import json
import re
import math

import numpy as np
import pytest
from conftest import shared_path

from deeplab import USER_ERRORS
from deeplab.cli import run_main
from deeplab.eval.evaluate import evaluate, load_result, read_ids, write_result
from deeplab.eval.tables import format_table
from deeplab.labels import load_classes, read_label, write_label

GT = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
PRED = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)


def _write(folder, labels: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for name, lab in labels.items():
        write_label(folder / f"{name}.png", lab)
    return folder


def _pair(tmp_path, gts: dict, preds: dict):
    return _write(tmp_path / "pred", preds), _write(tmp_path / "gt", gts)


def test_hand_computed_matrix_and_ious_with_absent_class(tmp_path):
    pred_dir, gt_dir = _pair(tmp_path, {"a": GT}, {"a": PRED})
    r = evaluate(pred_dir, gt_dir, ["a"], 4, trimap_widths=None)
    # rows = ground truth, columns = prediction; class 3 in neither
    assert r["confusion"] == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert r["iou"][:3] == pytest.approx([1 / 2, 1 / 3, 1 / 2]) and r["iou"][3] is None
    assert r["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert r["pixel_acc"] == pytest.approx(3 / 5)
    assert r["class_acc"][:3] == pytest.approx([1 / 2, 1 / 2, 1]) and r["class_acc"][3] is None
    assert r["mean_class_acc"] == pytest.approx(2 / 3)
    assert r["fw_iou"] == pytest.approx(2 / 5 * 1 / 2 + 2 / 5 * 1 / 3 + 1 / 5 * 1 / 2)
    assert r["pixels"] == 5 and r["images"] == 1 and r["trimap"] is None
    assert r["per_image"]["a"]["mean_iou"] == pytest.approx(r["mean_iou"])


def test_class_only_in_prediction_counts_with_zero_iou(tmp_path):
    pred = PRED.copy()
    pred[0, 0] = 3  # a false positive of a class absent from the ground truth
    pred_dir, gt_dir = _pair(tmp_path, {"a": GT}, {"a": pred})
    r = evaluate(pred_dir, gt_dir, ["a"], 4)
    assert r["iou"] == pytest.approx([0.0, 1 / 3, 1 / 2, 0.0])
    assert r["mean_iou"] == pytest.approx((1 / 3 + 1 / 2) / 4)


def test_ignored_pixels_do_not_count_whatever_is_predicted(tmp_path):
    a = evaluate(*_pair(tmp_path / "1", {"a": GT}, {"a": PRED}), ["a"], 4)
    pred = PRED.copy()
    pred[1, 2] = 255  # even an out-of-range value under void is skipped
    b = evaluate(*_pair(tmp_path / "2", {"a": GT}, {"a": pred}), ["a"], 4)
    assert a["confusion"] == b["confusion"] and a["mean_iou"] == b["mean_iou"]
    # another ignore value (CamVid's 11) works the same way
    gt11 = np.where(GT == 255, 11, GT).astype(np.uint8)
    c = evaluate(*_pair(tmp_path / "3", {"a": gt11}, {"a": PRED}), ["a"], 4, ignore=11)
    assert c["confusion"] == a["confusion"]


def test_set_level_matrix_is_not_a_mean_of_images(tmp_path):
    gts = {"a": np.zeros((2, 2), np.uint8), "b": np.ones((4, 4), np.uint8)}
    preds = {"a": np.ones((2, 2), np.uint8), "b": np.ones((4, 4), np.uint8)}
    r = evaluate(*_pair(tmp_path, gts, preds), ["a", "b"], 2)
    # class 0: tp 0, union 4 -> 0; class 1: tp 16, union 20 -> 0.8
    assert r["iou"] == pytest.approx([0.0, 0.8])
    assert r["mean_iou"] == pytest.approx(0.4)
    assert r["per_image"]["a"]["mean_iou"] == pytest.approx(0.0)
    assert r["per_image"]["b"]["mean_iou"] == pytest.approx(1.0)


def test_workers_give_the_same_result(tmp_path):
    rng = np.random.default_rng(1)
    gts, preds = {}, {}
    for k in range(9):
        g = rng.integers(0, 5, (20, 30)).astype(np.uint8)
        g[rng.random(g.shape) < 0.1] = 255
        gts[f"i{k}"], preds[f"i{k}"] = g, np.where(rng.random(g.shape) < 0.7, g % 5, rng.integers(0, 5, g.shape))
    pred_dir, gt_dir = _pair(tmp_path, gts, {k: v.astype(np.uint8) for k, v in preds.items()})
    one = evaluate(pred_dir, gt_dir, sorted(gts), 5, trimap_widths=[1, 3], jobs=1)
    two = evaluate(pred_dir, gt_dir, sorted(gts), 5, trimap_widths=[1, 3], jobs=2)
    assert one == two


@pytest.mark.parametrize("case, needle", [
    ("missing", "id b: prediction"),
    ("size", "id b: prediction is 4x3 pixels but ground truth is 3x2"),
    ("gt_range", "b.png holds value(s) 7: neither a class (0..3) nor the ignore value 255"),
    ("pred_range", "id b: prediction holds label [4]"),
])
def test_bad_input_names_the_id(tmp_path, case, needle):
    gts, preds = {"a": GT, "b": GT.copy()}, {"a": PRED, "b": PRED.copy()}
    if case == "missing":
        del preds["b"]
    elif case == "size":
        preds["b"] = np.zeros((3, 4), np.uint8)
    elif case == "gt_range":
        gts["b"][0, 0] = 7
    else:
        preds["b"][0, 0] = 4
    with pytest.raises(USER_ERRORS, match=re.escape(needle)):
        evaluate(*_pair(tmp_path, gts, preds), ["a", "b"], 4)


def test_read_ids_both_list_styles(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("2007_000033\n\n/JPEGImages/2007_000042.jpg /SegmentationClassAug/2007_000042.png\n")
    assert read_ids(p) == ["2007_000033", "2007_000042"]
    with pytest.raises(USER_ERRORS, match="list file .*nope.txt not found"):
        read_ids(tmp_path / "nope.txt")
    p.write_text("a\nb\na\n")
    with pytest.raises(USER_ERRORS, match=r"l.txt:3: id 'a' repeats line 1"):
        read_ids(p)


def test_table_layout_and_json_roundtrip(tmp_path):
    r = evaluate(*_pair(tmp_path, {"a": GT}, {"a": PRED}), ["a"], 4,
                 class_names=["background", "aeroplane", "pottedplant", "tvmonitor"], name="DeepLab")
    text = format_table([r, {**r, "name": "Other", "iou": [0.9, 0.1, 0.1, None], "mean_iou": 0.4}])
    head, row1, row2 = text.splitlines()
    assert head.split() == ["Method", "bkg", "aero", "plant", "tv", "mean"]
    assert row1.split() == ["DeepLab", "50.0", "33.3", "50.0", "-", "44.4"]
    assert len(head) == len(row1) == len(row2)  # aligned
    md = format_table([r, {**r, "name": "Other", "iou": [0.9, 0.1, 0.1, None], "mean_iou": 0.4}], "markdown")
    assert "| Other | **90.0** | 10.0 | 10.0 | - | 40.0 |" in md
    write_result(tmp_path / "r.json", r)
    raw = (tmp_path / "r.json").read_text()
    assert "NaN" not in raw
    assert load_result(tmp_path / "r.json") == json.loads(json.dumps(r))


def test_tool_writes_json_and_plot_and_compares(tmp_path, capsys):
    from deeplab.commands import eval as tool

    gt = np.zeros((12, 12), np.uint8)
    gt[3:9, 3:9] = 15
    gt[2, 2:10] = 255
    pred = np.roll(gt, 1, axis=1)
    pred[pred == 255] = 0
    pred_dir, gt_dir = _pair(tmp_path, {"x": gt}, {"x": pred})
    (tmp_path / "list.txt").write_text("x\n")
    out, png = tmp_path / "o.json", tmp_path / "t.png"
    assert tool.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--list", str(tmp_path / "list.txt"),
                      "--json", str(out), "--plot", str(png), "--trimap", "1:4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "bkg" in printed and "person" in printed and "mean IoU" in printed
    r = json.loads(out.read_text())
    assert r["trimap"]["widths"] == [1, 2, 3, 4] and len(r["confusion"]) == 21
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert tool.main(["--compare", str(out), str(out), "--plot", str(png)]) == 0
    assert capsys.readouterr().out.count("pred ") >= 2
    with pytest.raises(SystemExit) as e:
        run_main(tool.main, ["--pred", str(tmp_path / "nope"), "--gt", str(gt_dir), "--list",
                             str(tmp_path / "list.txt")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prediction folder") and "\n" not in err


# ---------------------------------------------------------------- one dataset description (issue 15 item 5)
def test_camvid_evaluates_with_its_defaults(tmp_path, capsys):
    """Prepared CamVid labels hold void as 255: --classes camvid alone must evaluate them."""
    from deeplab.commands import eval as tool

    camvid = load_classes("camvid")
    assert (camvid.num_classes, camvid.void, camvid.ignore) == (11, 255, 255)
    gt = np.array([[0, 10, 255], [3, 3, 255]], np.uint8)
    pred = np.array([[0, 10, 7], [3, 4, 0]], np.uint8)
    pred_dir, gt_dir = _pair(tmp_path, {"x": gt}, {"x": pred})
    (tmp_path / "list.txt").write_text("x\n")
    out = tmp_path / "o.json"
    assert tool.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--list", str(tmp_path / "list.txt"),
                      "--classes", "camvid", "--json", str(out), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert r["ignore"] == 255 and r["num_classes"] == 11 and r["classes"][10] == "Bicyclist"
    assert r["pixels"] == 4 and r["pixel_acc"] == 0.75  # the two void pixels left out
    assert "Sky" in capsys.readouterr().out


def test_tools_and_makefile_read_the_description(tmp_path):
    """The help texts name no per-dataset void value, the Makefile passes no --ignore and takes
    NUM_LABELS from the description (python -m deeplab.labels)."""
    import shutil
    import subprocess
    import sys

    from conftest import REPO
    from deeplab.commands import crf_search, report

    for parser in (crf_search.build_parser(), report.build_parser()):
        text = parser.format_help()
        assert "CamVid: 11" not in text and "11 for camvid" not in text
    assert crf_search.build_parser().parse_args(["--images", "i", "--scores", "s", "--labels", "l", "--list", "x",
                                                 "--out", "o"]).ignore_label is None
    makefile = (REPO / "Makefile").read_text()
    assert "--ignore 255" not in makefile
    r = subprocess.run([sys.executable, "-m", "deeplab.labels", "camvid", "num_classes", "ignore"],
                       capture_output=True, text=True, cwd=REPO)
    assert (r.returncode, r.stdout) == (0, "11 255\n")
    if shutil.which("make") is None:
        pytest.skip("no make")
    three = tmp_path / "three.txt"
    three.write_text("0 a 0 0 0\n1 b 1 1 1\n2 c 2 2 2\n254 void 9 9 9\n")
    for classes, count, ignore in (("camvid", 11, 255), (str(three), 3, 254)):
        r = subprocess.run(["make", "-n", "-s", "netinfo", "EXP=synthetic/LargeFOV-small", f"CLASSES={classes}",
                            f"PY={sys.executable}"], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert f"--set NUM_LABELS={count} " in r.stdout and f"--set IGNORE_LABEL={ignore} " in r.stdout


# ---------------------------------------------------------------- real VOC val labels
def _voc(n=50):
    labels = shared_path("data", "voc12", "val_labels")
    ids = read_ids(shared_path("data", "voc12", "lists", "val.txt"))[:n]
    return labels, ids


def test_voc_ground_truth_against_itself_is_perfect():
    labels, ids = _voc()
    r = evaluate(labels, labels, ids, 21, trimap_widths=range(1, 41))
    present = [v for v in r["iou"] if v is not None]
    assert present and all(v == 1.0 for v in present)
    assert r["mean_iou"] == r["pixel_acc"] == r["mean_class_acc"] == 1.0
    assert r["fw_iou"] == pytest.approx(1.0, abs=1e-12)  # a sum of frequency x IoU
    assert all(v == 1.0 for v in r["trimap"]["mean_iou"] + r["trimap"]["pixel_acc"])
    assert all(b > a for a, b in zip(r["trimap"]["pixels"], r["trimap"]["pixels"][1:]))


def test_voc_known_perturbation_gives_hand_derived_result(tmp_path):
    """Every person pixel predicted as background: person IoU 0, background n0 / (n0 + n15)."""
    labels, ids = _voc()
    hist = np.zeros(256, np.int64)
    pred_dir = tmp_path / "pred"
    for i in ids:
        g = read_label(labels / f"{i}.png")
        hist += np.bincount(g.ravel(), minlength=256)
        p = np.where(g == 15, 0, g)
        p[p == 255] = 0
        write_label(pred_dir / f"{i}.png", p.astype(np.uint8))
    r = evaluate(pred_dir, labels, ids, 21, jobs=2)
    n0, n15, total = hist[0], hist[15], hist[:21].sum()
    assert n15 > 0
    assert r["iou"][15] == 0.0
    assert r["iou"][0] == pytest.approx(n0 / (n0 + n15))
    others = [r["iou"][c] for c in range(1, 21) if c != 15 and hist[c]]
    assert others == [1.0] * len(others)
    assert r["pixel_acc"] == pytest.approx(1 - n15 / total)
    assert r["pixels"] == total
    expected_mean = (n0 / (n0 + n15) + len(others)) / (2 + len(others))
    assert r["mean_iou"] == pytest.approx(expected_mean)
    assert math.isclose(r["class_acc"][15], 0.0)
