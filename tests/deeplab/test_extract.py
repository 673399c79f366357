"""Score-map extraction (deeplab/extract/runner.py, tools/extract.py) against a direct engine forward.

The tiny test net (tests/fixtures/extract/tiny_test.prototxt) mirrors the release's
test.prototxt: ImageSegData (crop 33, VOC mean), three stride-2 poolings, fc8, a zoom-8
Interp and MAT_WRITE. Expected canvases and score sizes are computed by hand below.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from conftest import FIXTURES, REPO
from deeplab import USER_ERRORS
from deeplab.cli import run_main
from deeplab.extract.runner import label_palette
from deeplab.lists import read_items
from deeplab.labels import read_label
from caffe.layer.output import blob_to_matlab
from caffe.net import Net
from deeplab.extract.scoremaps import load_scores, upsample_scores
from deeplab.extract.scorenet import ScoreNet

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

from deeplab.commands import extract as tool  # noqa: E402


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
        assert json.loads((out / f"{ident}.json").read_text()) == {"height": h, "width": w, "zoom": 8, "classes": 3,
                                                                   "offset": 0}
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


def test_labels_out_without_classes_uses_voc_colours(data, tmp_path):
    """Issue 15 item 7: a 3-class net writes label PNGs with no class list (VOC's colour map)."""
    labels = tmp_path / "labels"
    assert run(data, tmp_path / "npy", "--labels-out", str(labels)) == 0
    from PIL import Image
    for ident, (h, w, _, _) in IMAGES.items():
        with Image.open(labels / f"{ident}.png") as im:
            assert im.mode == "P" and im.size == (w, h)
            assert im.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # VOC's first three colours


def test_labels_out_class_count_checked_only_with_a_class_list(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(tool.main, ["--model", PROTOTXT, "--weights", str(data[1]), "--list", str(data[0] / "list.txt"),
                             "--root", str(data[0]), "--out", str(tmp_path), "--labels-out", str(tmp_path / "l"),
                             "--classes", "voc12", *SETS])
    assert e.value.code == 2
    assert "3 channels but class list 'voc12' has 21 classes" in capsys.readouterr().err
    assert label_palette("fc8", 256) is None
    with pytest.raises(USER_ERRORS, match="257 channels; label PNGs hold at most 256 classes"):
        label_palette("fc8", 257)


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
    full = sorted(f for f in os.listdir(tmp_path / "full") if not f.startswith("."))
    parts = [sorted(f for f in os.listdir(tmp_path / f"s{i}") if not f.startswith(".")) for i in (1, 2, 3)]
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
    items = read_items(ids, root / "JPEGImages")
    assert [(i.lineno, i.id, i.path) for i in items] == [
        (1, "small", str(root / "JPEGImages" / "small.png")), (2, "tall", str(root / "JPEGImages" / "tall.png"))]
    ids.write_text("small\nsmall\n")
    with pytest.raises(USER_ERRORS, match=r"ids.txt:2: id 'small' repeats line 1"):
        read_items(ids, root)


def test_blob_choice(data, tmp_path):
    net = ScoreNet(PROTOTXT, mapping=mapping(), blob="fc6", want_mat=True)
    assert (net.blob, net.zoom, net.num_classes, net.mat_blob) == ("fc6", 8, 6, None)
    with pytest.raises(USER_ERRORS, match="--blob 'nope' is not a blob of the test net"):
        ScoreNet(PROTOTXT, mapping=mapping(), blob="nope")
    with pytest.raises(USER_ERRORS, match=r"placeholder \$\{EXP\} has no value"):
        ScoreNet(PROTOTXT, mapping={k: v for k, v in mapping().items() if k != "EXP"})


# A tiny net in the style of DeepLab's 514 test nets (prototxt/voc12/DeepLab/test.prototxt): a crop
# of 8k + 2 = 34 pixels; pool1-3 MAX 2x2 stride 2 pad 1 and pool4 2x2 stride 1 pad 1 give
# 34 -> 18 -> 10 -> 6 -> 7 fc8 rows; Interp zoom 8 makes 49, Padding -7/-8 crops back to 34,
# so fc8 row r lies on pixel 8r - 7.
TINY_514 = """name: "tiny514"
layer { name: "data" type: "ImageSegData" top: "data"
  image_data_param { source: "unused.txt" batch_size: 1 label_type: NONE has_label: false }
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675 crop_size: 34 mirror: false } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 pad: 1 kernel_size: 3 weight_filler { type: "gaussian" std: 0.02 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 5 pad: 1 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "pool3" type: "Pooling" bottom: "pool2" top: "pool3"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "pool4" type: "Pooling" bottom: "pool3" top: "pool4"
  pooling_param { pool: MAX kernel_size: 2 stride: 1 pad: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "pool4" top: "fc6"
  convolution_param { num_output: 6 pad: 2 dilation: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc8_voc12" type: "Convolution" bottom: "fc6" top: "fc8_voc12"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "fc8_interp" type: "Interp" bottom: "fc8_voc12" top: "fc8_interp" interp_param { zoom_factor: 8 } }
layer { name: "fc8_crop" type: "Padding" bottom: "fc8_interp" top: "fc8_crop"
  padding_param { pad_beg: -7 pad_end: -8 } }
layer { name: "fc8_mat" type: "MatWrite" bottom: "fc8_crop"
  mat_write_param { prefix: "${FEATURE_DIR}/" } include { phase: TEST } }
"""
# id -> (canvas, fc8 rows x cols kept = ceil((H - 1 + 7) / 8) + 1). 20 -> 5, 27 -> 6, 33 -> 6,
# 50 -> 8, 37 -> 7, 21 -> 5, 45 -> 8. The crop (7 x 7 fc8, 34 x 34 cropped map) covers small
# and exact. Larger images get the smallest canvas on which the net's own cropped map (n fc8
# rows -> 8(n - 1) + 1 - 15) covers them too, as --format mat needs, so that both formats
# come from the same canvas: 50 rows need n = 9 (input 50 -> 26 -> 14 -> 8 -> 9), 37 and 45
# columns need n = 8 and 9 (inputs 42 -> 22 -> 12 -> 7 -> 8 and 50); 41 would give only 7.
GEOMETRY_514 = {"small": ((34, 34), (5, 6)), "exact": ((34, 34), (6, 6)), "tall": ((50, 42), (8, 7)),
                "wide": ((34, 50), (5, 8))}


@pytest.fixture(scope="module")
def net514(data, tmp_path_factory):
    """The 514-style model file and random weights for it."""
    folder = tmp_path_factory.mktemp("net514")
    model = folder / "test.prototxt"
    model.write_text(TINY_514)
    torch.manual_seed(1)
    weights = folder / "tiny514.caffemodel"
    Net(str(model), "TEST", mapping={"FEATURE_DIR": str(folder)}).save(weights)
    return model, weights


def run514(data, net514, out, *extra):
    root = data[0]
    model, weights = net514
    return tool.main(["--model", str(model), "--weights", str(weights), "--list", str(root / "list.txt"),
                      "--root", str(root), "--out", str(out), "--quiet", "--set", "FEATURE_DIR=unused", *extra])


def reference514(data, net514, ident, feature_dir):
    """The whole 514-style net (MatWrite included) on the hand-made canvas: fc8, its zoomed map
    and the cropped zoomed map, which MatWrite also writes to ``feature_dir/iter_0_0_blob_0.mat``."""
    root = data[0]
    model, weights = net514
    h, w, _, _ = IMAGES[ident]
    (ch, cw), _ = GEOMETRY_514[ident]
    canvas = np.zeros((ch, cw, 3), np.float32)
    canvas[:h, :w] = cv2.imread(str(root / "JPEGImages" / f"{ident}.png")).astype(np.float32) - MEAN
    net = Net(str(model), "TEST", mapping={"FEATURE_DIR": str(feature_dir)}, input_shapes={"data": (1, 3, ch, cw)})
    net.copy_from(str(weights))
    with torch.no_grad():
        blobs = net({"data": torch.from_numpy(canvas.transpose(2, 0, 1)[None].copy())},
                    outputs=["fc8_voc12", "fc8_interp", "fc8_crop"])
    return tuple(blobs[b][0].numpy() for b in ("fc8_voc12", "fc8_interp", "fc8_crop"))


def test_514_geometry(net514):
    model = str(net514[0])
    net = ScoreNet(model, mapping={"FEATURE_DIR": "unused"})
    assert (net.blob, net.zoom, net.offset, net.crop) == ("fc8_voc12", 8, 7, 34)
    assert net.out_hw(34, 34) == (7, 7)
    for ident, (canvas, kept) in GEOMETRY_514.items():
        h, w = IMAGES[ident][:2]
        assert net.canvas(h, w) == canvas
        assert (net.rows(h), net.rows(w)) == kept
    # the image-aligned stride-1 map can still be asked for by name
    crop = ScoreNet(model, mapping={"FEATURE_DIR": "unused"}, blob="fc8_crop")
    assert (crop.zoom, crop.offset) == (1, 0)


def test_514_npy_equals_the_nets_cropped_upsampling(data, net514, tmp_path):
    import deeplab.crf.io

    out, labels = tmp_path / "npy", tmp_path / "labels"
    classes = tmp_path / "three.txt"
    classes.write_text("0 background 0 0 0\n1 cat 10 20 30\n2 dog 40 50 60\n")
    assert run514(data, net514, out, "--dtype", "float32", "--batch", "2", "--labels-out", str(labels),
                  "--classes", str(classes)) == 0
    for ident, (h, w, _, _) in IMAGES.items():
        (ch, cw), (rows, cols) = GEOMETRY_514[ident]
        feature_dir = tmp_path / f"engine_{ident}"
        fc8, zoomed, cropped = reference514(data, net514, ident, feature_dir)
        assert cropped.shape == (3, ch, cw)
        saved = np.load(out / f"{ident}.npy")
        assert saved.shape == (3, rows, cols)  # stride 8, not the stride-1 map
        np.testing.assert_allclose(saved, fc8[:, :rows, :cols], rtol=1e-5, atol=1e-5)
        assert json.loads((out / f"{ident}.json").read_text()) == {"height": h, "width": w, "zoom": 8, "classes": 3,
                                                                   "offset": 7}
        full = load_scores(out / f"{ident}.npy").scores
        # the net's own cropped map, and what its MatWrite wrote, over the image area
        np.testing.assert_allclose(full, cropped[:, :h, :w], rtol=1e-5, atol=1e-5)
        engine = scipy.io.loadmat(feature_dir / "iter_0_0_blob_0.mat")["data"][..., 0].transpose(2, 1, 0)
        np.testing.assert_allclose(full, engine[:, :h, :w], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(full, zoomed[:, 7:7 + h, 7:7 + w], rtol=1e-5, atol=1e-5)  # Interp, drop 7
        # without the offset the map would be 7 pixels off
        assert not np.allclose(upsample_scores(saved, 8, h, w), full, atol=1e-3)
        label = read_label(labels / f"{ident}.png")
        np.testing.assert_array_equal(label, full.argmax(0))
        # the CRF stage reads it unchanged
        image, scores = deeplab.crf.io.load_pair(str(data[0] / "JPEGImages"), str(out), ident)
        assert image.shape == (h, w, 3) and (scores.height, scores.width) == (h, w)
        np.testing.assert_array_equal(scores.scores, full)


def test_514_mat_is_the_cropped_map(data, net514, tmp_path):
    """--format mat dumps MatWrite's bottom, the cropped map, over the same canvas as .npy."""
    assert run514(data, net514, tmp_path / "mat", "--format", "mat") == 0
    assert run514(data, net514, tmp_path / "npy", "--dtype", "float32") == 0
    for ident, (h, w, _, _) in IMAGES.items():
        (ch, cw), _ = GEOMETRY_514[ident]
        data_ = scipy.io.loadmat(tmp_path / "mat" / f"{ident}_blob_0.mat")["data"]
        assert data_.shape == (cw, ch, 3, 1)  # MATLAB W x H x C x N
        mat = load_scores(tmp_path / "mat" / f"{ident}_blob_0.mat", (h, w)).scores
        np.testing.assert_allclose(load_scores(tmp_path / "npy" / f"{ident}.npy").scores, mat, rtol=1e-5, atol=1e-5)


def test_padding_before_mat_write_is_refused(data, net514, tmp_path):
    """A Padding that adds rows puts fc8's row r on pixel 8r + 1: no offset >= 0 records that."""
    model = tmp_path / "padded.prototxt"
    model.write_text(TINY_514.replace("pad_beg: -7 pad_end: -8", "pad_beg: 1 pad_end: 0"))
    net = ScoreNet(str(model), mapping={"FEATURE_DIR": "unused"})
    assert (net.blob, net.zoom, net.offset) == ("fc8_voc12", 8, -1)
    root = data[0]
    argv = ["--model", str(model), "--weights", str(net514[1]), "--list", str(root / "list.txt"), "--root", str(root),
            "--out", str(tmp_path / "out"), "--quiet", "--set", "FEATURE_DIR=unused"]
    with pytest.raises(USER_ERRORS, match=r"row r lies on pixel 8r \+ 1 .* --blob 'fc8_crop'"):
        tool.main(argv)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


@pytest.mark.parametrize("variant, offset", [("DeepLab", 7), ("DeepLab-4x4", 7), ("DeepLab-7x7", 7),
                                             ("DeepLab-LargeFOV", 0)])
def test_release_nets_dump_fc8_with_their_offset(variant, offset):
    """The release's test nets: fc8 at stride 8 is dumped, with the 514 nets' offset of 7."""
    from caffe.net import PHASES, filter_layers
    from caffe.prototxt import parse_net
    from deeplab.extract.scorenet import default_blob, mat_write_chain

    mapping = {"DATA_ROOT": "", "LIST_DIR": "", "TEST_SET": "val", "FEATURE_DIR": "f", "NUM_LABELS": "21"}
    layers = filter_layers(parse_net(str(REPO / "prototxt" / "voc12" / variant / "test.prototxt"), mapping),
                           PHASES["TEST"])
    blob = default_blob(layers)
    assert blob == "fc8_voc12"
    assert mat_write_chain(layers, blob) == ("fc8_crop" if offset else "fc8_interp", offset)


def test_amp_auto_resolves_and_a_changed_precision_redoes_the_outputs(data, tmp_path, monkeypatch, capsys):
    """The precision extraction used is recorded: a rerun that comes to another one (forced
    float32, or the probe's choice) is not skipped as "same inputs"."""
    from caffe import precision
    from deeplab.provenance import read_record
    from test_precision import FakeTimer
    monkeypatch.delenv("DEEPLAB_AMP")
    monkeypatch.setattr(precision, "ConvTimer",
                        lambda: FakeTimer(fixed={"fp32": 0, "bf16": 0}, per_mac={"fp32": 2e-9, "bf16": 1e-9}))
    out = tmp_path / "out"
    assert run(data, out) == 0
    err = capsys.readouterr().err
    assert "precision (--amp auto): bf16 autocast; largest convolution" in err and "4 written" in err
    assert read_record(out)["inputs"]["amp"] == "bf16"
    assert run(data, out, "--amp", "fp32") == 0
    err = capsys.readouterr().err
    assert "made from other inputs (amp: bf16 -> null)" in err and "4 written, 0 already done" in err
    assert "precision (--amp auto)" not in err
    assert read_record(out)["inputs"]["amp"] is None          # as float32 runs recorded it before auto
    assert run(data, out, "--amp", "fp32") == 0
    assert "0 written, 4 already done" in capsys.readouterr().err
    assert run(data, out) == 0                                   # auto again: the cached choice, bf16
    err = capsys.readouterr().err
    assert "cached in" in err and "4 written, 0 already done" in err
