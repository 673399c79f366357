"""Score-map extraction (deeplab/extract.py, tools/extract.py) against a direct engine forward.

The tiny test net (tests/fixtures/extract/tiny_test.prototxt) mirrors the release's
test.prototxt: ImageSegData (crop 33, VOC mean), three stride-2 poolings, fc8, a zoom-8
Interp and MAT_WRITE. Expected canvases and score sizes are computed by hand below.
"""
from __future__ import annotations

import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from conftest import FIXTURES, REPO
from deeplab import DeepLabError
from deeplab.cli import run_main
from deeplab.extract import ScoreNet, read_list
from deeplab.labels import read_label
from deeplab.layers.output import blob_to_matlab
from deeplab.net import Net
from deeplab.scoremaps import load_scores, upsample_scores

PROTOTXT = str(FIXTURES / "extract" / "tiny_test.prototxt")
MEAN = np.array([104.008, 116.669, 122.675], np.float32)
# id -> (H, W, canvas H x W, score rows x cols). Crop 33; pooling k3 s2 p1 (ceil) three times:
# 33 -> 17 -> 9 -> 5, 50 -> 26 -> 14 -> 8, 37 -> 19 -> 10 -> 6, 45 -> 23 -> 12 -> 7.
# Rows kept = ceil((H - 1) / 8) + 1: 20 -> 4, 27 -> 5, 33 -> 5, 50 -> 8, 37 -> 6, 21 -> 4, 45 -> 7.
IMAGES = {
    "small": (20, 27, (33, 33), (4, 5)),
    "exact": (33, 33, (33, 33), (5, 5)),
    "tall": (50, 37, (50, 37), (8, 6)),   # larger than the crop both ways: runs at 50 x 37
    "wide": (21, 45, (33, 45), (4, 7)),   # larger in one direction only
}

_spec = importlib.util.spec_from_file_location("extract_tool", REPO / "tools" / "extract.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def mapping(feature_dir="unused", list_id=""):
    return {"NET_ID": "tiny", "DATA_ROOT": "", "LIST": "", "EXP": "voc12",
            "FEATURE_DIR": str(feature_dir), "LIST_ID": str(list_id)}


SETS = [f"--set={k}={v}" for k, v in mapping().items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Images (JPEGImages/*.png, lossless), a release-style list and random weights."""
    root = tmp_path_factory.mktemp("voc")
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir()
    lines = []
    for ident, (h, w, _, _) in IMAGES.items():
        cv2.imwrite(str(root / "JPEGImages" / f"{ident}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        lines.append(f"/JPEGImages/{ident}.png /SegmentationClassAug/{ident}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    net = Net(PROTOTXT, "TEST", mapping=mapping())
    weights = root / "tiny.caffemodel"
    net.save(weights)
    return root, weights


def run(data, out, *extra):
    root, weights = data
    argv = ["--model", PROTOTXT, "--weights", str(weights), "--list", str(root / "list.txt"),
            "--root", str(root), "--out", str(out), "--quiet", *SETS, *extra]
    return tool.main(argv)


def reference(data, ident, tmp_path):
    """Direct engine forward of the full test net (MatWrite included) on the hand-made canvas."""
    root, weights = data
    h, w, (ch, cw), _ = IMAGES[ident]
    image = cv2.imread(str(root / "JPEGImages" / f"{ident}.png")).astype(np.float32) - MEAN
    canvas = np.zeros((ch, cw, 3), np.float32)
    canvas[:h, :w] = image
    feature_dir = tmp_path / f"engine_{ident}"
    ids = tmp_path / f"{ident}_id.txt"
    ids.write_text(ident + "\n")
    net = Net(PROTOTXT, "TEST", mapping=mapping(feature_dir, ids), input_shapes={"data": (1, 3, ch, cw)})
    net.copy_from(str(weights))
    x = torch.from_numpy(canvas.transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        label = torch.full((1, 1, ch, cw), 255.0)  # read only by the Silence layer
        blobs = net({"data": x, "label": label}, outputs=["fc8_voc12", "fc8_interp"])
    return blobs["fc8_voc12"][0].numpy(), blobs["fc8_interp"][0].numpy(), feature_dir / f"{ident}_blob_0.mat"


def test_geometry_by_hand():
    net = ScoreNet(PROTOTXT, mapping=mapping())
    assert (net.blob, net.zoom, net.crop, net.num_classes) == ("fc8_voc12", 8, 33, 3)
    assert net.mat_blob is None  # only asked for with want_mat
    for h, w, canvas, scores in IMAGES.values():
        assert net.canvas(h, w) == canvas
        assert (net.rows(h), net.rows(w)) == scores
        assert all(o >= s for o, s in zip(net.out_hw(*canvas), scores))
    # the pruned net drops MatWrite and Silence (no side effects, no label needed)
    assert [lay.type for lay in net.net.layers if lay.type in ("MatWrite", "Silence")] == []


def test_npy_matches_engine_forward(data, tmp_path):
    out = tmp_path / "npy"
    assert run(data, out, "--batch", "2", "--dtype", "float32") == 0
    for ident, (h, w, _, (rows, cols)) in IMAGES.items():
        fc8, _, _ = reference(data, ident, tmp_path)
        saved = np.load(out / f"{ident}.npy")
        assert saved.dtype == np.float32 and saved.shape == (3, rows, cols)
        np.testing.assert_allclose(saved, fc8[:, :rows, :cols], rtol=1e-5, atol=1e-5)
        assert json.loads((out / f"{ident}.json").read_text()) == {"height": h, "width": w, "zoom": 8, "classes": 3}
        full = load_scores(out / f"{ident}.npy")
        assert full.scores.shape == (3, h, w)  # never truncated, also for images larger than the crop


def test_default_float16(data, tmp_path):
    out = tmp_path / "f16"
    assert run(data, out, "--batch", "3") == 0
    fc8, _, _ = reference(data, "tall", tmp_path)
    saved = np.load(out / "tall.npy")
    assert saved.dtype == np.float16
    np.testing.assert_allclose(saved.astype(np.float32), fc8[:, :8, :6], rtol=2e-3, atol=2e-3)


def test_mat_is_what_mat_write_wrote(data, tmp_path):
    out = tmp_path / "mat"
    assert run(data, out, "--format", "mat", "--blob", "fc8_voc12", "--batch", "2") == 0
    for ident, (h, w, (ch, cw), (rows, cols)) in IMAGES.items():
        _, interp, engine_mat = reference(data, ident, tmp_path)
        # the Interp output of the whole canvas's scores: (rows - 1) * 8 + 1 >= the canvas
        zh, zw = interp.shape[1:]
        assert zh >= ch and zw >= cw and (zh - 1) % 8 == 0 and zh >= (rows - 1) * 8 + 1
        mat = scipy.io.loadmat(out / f"{ident}_blob_0.mat")
        data_ = mat["data"]
        assert data_.dtype == np.float32 and data_.shape == (zw, zh, 3, 1)  # MATLAB W x H x C x N
        np.testing.assert_allclose(data_, blob_to_matlab(interp), rtol=1e-5, atol=1e-5)
        c, y, x = 2, min(7, h - 1), min(30, cw - 1)
        assert data_[x, y, c, 0] == pytest.approx(float(interp[c, y, x]), rel=1e-5, abs=1e-5)
        engine = scipy.io.loadmat(engine_mat)["data"]  # the engine's own MatWrite layer
        np.testing.assert_allclose(data_[..., 0], engine.reshape(data_.shape[:3]), rtol=1e-5, atol=1e-5)
        cropped = load_scores(out / f"{ident}_blob_0.mat", (h, w)).scores
        np.testing.assert_allclose(cropped, interp[:, :h, :w], rtol=1e-5, atol=1e-5)


def test_labels_out(data, tmp_path):
    out, labels = tmp_path / "npy", tmp_path / "labels"
    classes = tmp_path / "three.txt"
    classes.write_text("0 background 0 0 0\n1 cat 10 20 30\n2 dog 40 50 60\n255 void 224 224 192\n")
    assert run(data, out, "--labels-out", str(labels), "--classes", str(classes), "--dtype", "float32") == 0
    for ident, (h, w, _, (rows, cols)) in IMAGES.items():
        fc8, interp, _ = reference(data, ident, tmp_path)
        expected = upsample_scores(fc8[:, :rows, :cols], 8, h, w).argmax(0)
        label = read_label(labels / f"{ident}.png")
        assert label.shape == (h, w)
        np.testing.assert_array_equal(label, expected)
        # the same labels as argmax of the net's own zoom-8 Interp output, cropped
        assert (label == interp[:, :h, :w].argmax(0)).mean() > 0.999
    from PIL import Image
    with Image.open(labels / "tall.png") as im:
        assert im.mode == "P" and im.getpalette()[:9] == [0, 0, 0, 10, 20, 30, 40, 50, 60]


def test_labels_out_class_count_checked(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(tool.main, ["--model", PROTOTXT, "--weights", str(data[1]), "--list", str(data[0] / "list.txt"),
                             "--root", str(data[0]), "--out", str(tmp_path), "--labels-out", str(tmp_path / "l"),
                             *SETS])
    assert e.value.code == 2
    assert "3 channels but class list 'voc12' has 21 classes" in capsys.readouterr().err


def test_resume_and_force(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(data, out) == 0
    good = np.load(out / "small.npy")
    np.save(out / "small.npy", np.zeros_like(good))  # a finished output is never redone...
    os.remove(out / "exact.npy")                       # ...a missing one is
    assert run(data, out) == 0
    assert "1 written, 3 already done" in capsys.readouterr().err
    assert not np.load(out / "small.npy").any()
    assert (out / "exact.npy").exists()
    assert run(data, out, "--force") == 0
    assert "4 written, 0 already done" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out / "small.npy"), good)


def test_shard_union_equals_full_run(data, tmp_path):
    assert run(data, tmp_path / "full") == 0
    assert run(data, tmp_path / "s1", "--shard", "1/3") == 0
    assert run(data, tmp_path / "s2", "--shard", "2/3") == 0
    assert run(data, tmp_path / "s3", "--shard", "3/3") == 0
    full = sorted(os.listdir(tmp_path / "full"))
    parts = [sorted(os.listdir(tmp_path / f"s{i}")) for i in (1, 2, 3)]
    assert sorted(sum(parts, [])) == full and len(full) == 2 * len(IMAGES)
    for i, names in enumerate(parts, 1):
        assert names  # each of the three shards got work
        for name in names:
            assert (tmp_path / f"s{i}" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()


def test_bad_image_names_its_list_line(data, tmp_path, capsys):
    root, weights = data
    bad = tmp_path / "JPEGImages"
    bad.mkdir()
    for ident in ("small", "exact"):
        (bad / f"{ident}.png").write_bytes((root / "JPEGImages" / f"{ident}.png").read_bytes())
    (bad / "broken.jpg").write_bytes(b"this is not a JPEG")
    (tmp_path / "list.txt").write_text("/JPEGImages/small.png\n\n/JPEGImages/exact.png\n/JPEGImages/broken.jpg\n")
    argv = ["--model", PROTOTXT, "--weights", str(weights), "--list", str(tmp_path / "list.txt"),
            "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet", *SETS]
    with pytest.raises(SystemExit) as e:
        run_main(tool.main, argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "list.txt:4 (id broken)" in err[0] and "broken.jpg is not a readable image" in err[0]
    (tmp_path / "list.txt").write_text("/JPEGImages/small.png\n/JPEGImages/missing.png\n")
    with pytest.raises(SystemExit):
        run_main(tool.main, argv)
    assert "list.txt:2 (id missing): image" in capsys.readouterr().err


def test_id_list_and_lookup(data, tmp_path):
    root, _ = data
    ids = tmp_path / "ids.txt"
    ids.write_text("small\ntall\n")
    items = read_list(ids, root / "JPEGImages")
    assert [(i.lineno, i.id, i.path) for i in items] == [
        (1, "small", str(root / "JPEGImages" / "small.png")), (2, "tall", str(root / "JPEGImages" / "tall.png"))]
    ids.write_text("small\nsmall\n")
    with pytest.raises(DeepLabError, match=r"ids.txt:2: id 'small' repeats line 1"):
        read_list(ids, root)


def test_blob_choice(data, tmp_path):
    net = ScoreNet(PROTOTXT, mapping=mapping(), blob="fc6", want_mat=True)
    assert (net.blob, net.zoom, net.num_classes, net.mat_blob) == ("fc6", 8, 6, None)
    with pytest.raises(DeepLabError, match="--blob 'nope' is not a blob of the test net"):
        ScoreNet(PROTOTXT, mapping=mapping(), blob="nope")
    with pytest.raises(DeepLabError, match=r"placeholder \$\{EXP\} has no value"):
        ScoreNet(PROTOTXT, mapping={k: v for k, v in mapping().items() if k != "EXP"})


def test_cropped_upsampling_is_not_dumped_misaligned(data, tmp_path):
    """DeepLab's 514 nets crop the zoomed map by 7 pixels before MatWrite: fc8's row r lies on
    pixel 8r - 7, so the default is the image-aligned map MatWrite reads, and fc8 is refused."""
    text = (FIXTURES / "extract" / "tiny_test.prototxt").read_text()
    mat_write = 'layers { name: "fc8_mat" type: MAT_WRITE bottom: "fc8_interp"'
    assert mat_write in text
    text = text.replace(mat_write, 'layers { bottom: "fc8_interp" top: "fc8_crop" name: "fc8_crop" type: PADDING\n'
                                   '  padding_param { pad_beg: -7 pad_end: -8 } }\n'
                                   + mat_write.replace("fc8_interp", "fc8_crop"))
    model = tmp_path / "cropped.prototxt"
    model.write_text(text)
    net = ScoreNet(str(model), mapping=mapping())
    assert (net.blob, net.zoom, net.offset) == ("fc8_crop", 1, 0)
    # fc8_crop has 8(r - 1) + 1 - 15 rows for r fc8 rows: 20 x 27 needs r = 5 x 6, i.e. inputs
    # 34 x 42 (34 -> 18 -> 10 -> 6, 42 -> 22 -> 12 -> 7; 33 gives 5 and 41 gives 6)
    assert net.canvas(20, 27) == (34, 42) and net.rows(20) == 20
    fc8 = ScoreNet(str(model), mapping=mapping(), blob="fc8_voc12")
    assert (fc8.zoom, fc8.offset) == (8, 7)
    root, weights = data
    argv = ["--model", str(model), "--weights", str(weights), "--list", str(root / "list.txt"), "--root", str(root),
            "--out", str(tmp_path / "out"), "--quiet", *SETS]
    with pytest.raises(DeepLabError, match=r"row r lies on pixel 8r - 7"):
        tool.main(argv + ["--blob", "fc8_voc12"])
    assert tool.main(argv + ["--blob", "fc8_voc12", "--format", "mat"]) == 0  # the .mat is MatWrite's blob
    assert tool.main(argv + ["--out", str(tmp_path / "npy"), "--dtype", "float32"]) == 0
    full = load_scores(tmp_path / "npy" / "tall.npy")
    mat = load_scores(tmp_path / "out" / "tall_blob_0.mat", (50, 37))
    np.testing.assert_allclose(full.scores, mat.scores, rtol=1e-5, atol=1e-5)
