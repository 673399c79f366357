"""The synthetic embedded dataset: deterministic, VOC-style files, void band on colour edges,
and its prototxt set (every LargeFOV layer type, sizes that line up)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from deeplab import USER_ERRORS
from deeplab.data import synthetic
from deeplab.data.datasets import read_ids
from deeplab.labels import load_classes, read_label

from deeplab.commands import make_synthetic as generate_tool  # noqa: E402


def test_render_is_deterministic_and_seed_dependent():
    a_img, a_lab = synthetic.render(7, 3, 96)
    b_img, b_lab = synthetic.render(7, 3, 96)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    c_img, _ = synthetic.render(8, 3, 96)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == (96, 96, 3) and a_img.dtype == np.uint8 and a_lab.shape == (96, 96)


def test_labels_have_a_void_band_on_colour_edges():
    classes_seen = set()
    band_grad, inside_grad = [], []
    for i in range(40):
        img, lab = synthetic.render(1, i, 128)
        assert set(np.unique(lab).tolist()) <= {0, 1, 2, 3, 4, 255}
        classes_seen |= set(np.unique(lab).tolist())
        # No two different classes touch: a void pixel always separates them (VOC-style band).
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any()
        void = lab == 255
        assert 0 < void.mean() < 0.2
        g = np.abs(np.diff(img.astype(np.float32).mean(2), axis=1))
        band_grad.append(g[void[:, 1:] & void[:, :-1]].mean())
        inside_grad.append(g[(lab[:, 1:] == lab[:, :-1]) & (lab[:, 1:] != 255) & (lab[:, 1:] != 4)
                             & (lab[:, 1:] != 2)].mean())
    assert classes_seen == {0, 1, 2, 3, 4, 255}
    # Object boundaries are crisp colour edges: far stronger gradients in the band than inside flat regions.
    assert np.mean(band_grad) > 4 * np.mean(inside_grad)


def test_classes_are_told_apart_by_texture_not_colour():
    flat, textured = {1: [], 3: []}, {2: [], 4: []}
    colours = {c: [] for c in (1, 2, 3, 4)}
    for i in range(60):
        img, lab = synthetic.render(2, i, 128)
        grey = img.astype(np.float32).mean(2)
        g = np.abs(np.diff(grey, axis=1))
        same = lab[:, 1:] == lab[:, :-1]
        for c in (1, 2, 3, 4):
            m = same & (lab[:, 1:] == c)
            if m.sum() > 50:
                (flat if c in flat else textured)[c].append(g[m].mean())
                colours[c].append(img[:, 1:][m].mean(0))
    assert max(np.mean(v) for v in flat.values()) * 3 < min(np.mean(v) for v in textured.values())
    # Mean object colour varies a lot within every class: colour alone does not name the class.
    for c, cols in colours.items():
        assert np.std(np.array(cols), axis=0).mean() > 30, c


def test_generate_writes_voc_style_files_and_skips_a_rerun(tmp_path):
    out = tmp_path / "syn"
    assert generate_tool.main(["--out", str(out), "--count", "10", "--size", "64", "--seed", "3"]) == 0
    train, val = read_ids(out / "list" / "train_id.txt"), read_ids(out / "list" / "val_id.txt")
    assert (len(train), len(val)) == (8, 2) and not set(train) & set(val)
    assert read_ids(out / "list" / "trainval_id.txt") == train + val
    line = (out / "list" / "train.txt").read_text().splitlines()[0]
    assert line == f"/JPEGImages/{train[0]}.jpg /SegmentationClass/{train[0]}.png"
    palette = load_classes("synthetic").palette
    for i in train + val:
        with Image.open(out / "JPEGImages" / f"{i}.jpg") as im:
            assert im.format == "JPEG" and im.size == (64, 64)
        with Image.open(out / "SegmentationClass" / f"{i}.png") as im:
            assert im.mode == "P"
            assert np.array(im.getpalette()[:15]).reshape(5, 3).tolist() == palette[:5].tolist()
    first = out / "SegmentationClass" / f"{train[0]}.png"
    _, expect = synthetic.render(3, 0, 64)
    np.testing.assert_array_equal(read_label(first), expect)
    stamp = os.stat(first).st_mtime_ns
    generate_tool.main(["--out", str(out), "--count", "10", "--size", "64", "--seed", "3"])
    assert os.stat(first).st_mtime_ns == stamp
    # Same parameters elsewhere: byte-identical files.
    other = tmp_path / "again"
    synthetic.generate(str(other), seed=3, count=10, size=64, quiet=True)
    for sub in ("JPEGImages", "SegmentationClass", "list"):
        for fn in os.listdir(out / sub):
            assert (out / sub / fn).read_bytes() == (other / sub / fn).read_bytes(), fn
    with pytest.raises(USER_ERRORS, match="count >= 2"):
        synthetic.generate(str(tmp_path / "bad"), count=1)


def test_classes_file():
    cs = load_classes("synthetic")
    assert cs.names == synthetic.CLASSES
    assert cs.palette[255].tolist() == [224, 224, 192]


MAPPING = {"DATA_ROOT": "/data", "LIST_DIR": "/lists", "TRAIN_SET": "train", "TEST_SET": "val",
           "FEATURE_DIR": "/features", "EXP": "/exp", "NET_ID": "LargeFOV-small"}


def test_prototxt_keeps_every_largefov_layer_type_and_sizes_line_up(tmp_path):
    from caffe.net import Net
    from caffe.prototxt import parse_solver

    d = REPO / "prototxt" / "synthetic" / "LargeFOV-small"
    train = Net(d / "train.prototxt", "TRAIN", MAPPING)
    types = {layer.type for layer in train.layers}
    assert {"ImageSegData", "Convolution", "ReLU", "Pooling", "Dropout", "Interp", "SoftmaxWithLoss",
            "SegAccuracy"} <= types
    dilations = {layer.name: tuple(layer.param.convolution_param.dilation) for layer in train.layers
                 if layer.type == "Convolution"}
    assert dilations["conv5_1"] == (2,) and dilations["fc6"][0] > 1
    assert train.layer("pool5a").param.pooling_param.pool == 1  # AVE
    n = train.blob_shapes["data"][0]
    assert train.blob_shapes["fc8_synthetic"] == (n, 5, 13, 13)
    assert train.blob_shapes["label_shrink"] == (n, 1, 13, 13)
    (tmp_path / "val_id.txt").write_text("a\n")
    test = Net(d / "test.prototxt", "TEST", dict(MAPPING, LIST_DIR=str(tmp_path)))
    assert test.blob_shapes["fc8_interp"] == (1, 5, 129, 129)
    solver = parse_solver(d / "solver.prototxt", MAPPING)
    assert solver.net == "prototxt/synthetic/LargeFOV-small/train.prototxt" and solver.max_iter > 0
    assert solver.snapshot_prefix == "/exp/model/train"
