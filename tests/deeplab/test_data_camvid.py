"""CamVid preparation on the real folder (a few images), both source layouts, bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from deeplab import USER_ERRORS
from deeplab.data import datasets as ds
from deeplab.labels import load_classes, read_label

from deeplab.commands import prepare_camvid as prepare  # noqa: E402


def test_prepare_real_camvid_maps_void_and_writes_release_lists(tmp_path):
    src = shared_path("data", "camvid")
    root, lists = tmp_path / "CamVid", tmp_path / "list"
    assert prepare.main(["--src", str(src), "--root", str(root), "--list-dir", str(lists), "--limit", "3"]) == 0
    train = ds.read_ids(src / "lists" / "train.txt")[:3]
    val = ds.read_ids(src / "lists" / "val.txt")[:3]
    assert (lists / "train_id.txt").read_text().split() == train
    assert (lists / "val_id.txt").read_text().split() == val
    assert (lists / "trainval_id.txt").read_text().split() == train + val
    lines = (lists / "train.txt").read_text().splitlines()
    assert lines[0] == f"/images/{train[0]}.png /labels/{train[0]}.png"
    palette = load_classes("camvid").palette
    for i in train + val:
        raw = np.array(Image.open(src / "labels" / f"{i}.png"))
        ours_im = Image.open(root / "labels" / f"{i}.png")
        assert ours_im.mode == "P"
        ours = np.array(ours_im)
        np.testing.assert_array_equal(ours[raw == 11], 255)
        np.testing.assert_array_equal(ours[raw != 11], raw[raw != 11])
        assert np.array(ours_im.getpalette()[:33]).reshape(11, 3).tolist() == palette[:11].tolist()
        assert (root / "images" / f"{i}.png").read_bytes() == (src / "images" / f"{i}.png").read_bytes()
    assert any((np.array(Image.open(src / "labels" / f"{i}.png")) == 11).any() for i in train + val)
    # The blind test split: images from test_images/, no labels, a list of images only.
    test = ds.read_ids(src / "lists" / "test.txt")[:3]
    assert (lists / "test.txt").read_text().splitlines()[0] == f"/images/{test[0]}.png"
    assert (root / "images" / f"{test[0]}.png").read_bytes() == (src / "test_images" / f"{test[0]}.png").read_bytes()
    assert not (root / "labels" / f"{test[0]}.png").exists()


def test_segnet_layout_and_bad_labels(tmp_path):
    src = shared_path("data", "camvid")
    seg = tmp_path / "SegNet"
    ids = ds.read_ids(src / "lists" / "val.txt")[:2]
    for d in ("val", "valannot"):
        (seg / d).mkdir(parents=True)
    for i in ids:
        shutil.copy(src / "images" / f"{i}.png", seg / "val" / f"{i}.png")
        shutil.copy(src / "labels" / f"{i}.png", seg / "valannot" / f"{i}.png")
    lists = ds.prepare_camvid(str(seg), str(tmp_path / "root"), str(tmp_path / "list"))
    assert lists == {"val": ids}
    lab = read_label(tmp_path / "root" / "labels" / f"{ids[0]}.png")
    assert set(np.unique(lab).tolist()) <= set(range(11)) | {255}
    # A label value beyond void is refused with the file named.
    bad = np.array(Image.open(seg / "valannot" / f"{ids[1]}.png"))
    bad[0, 0] = 12
    Image.fromarray(bad).save(seg / "valannot" / f"{ids[1]}.png")
    with pytest.raises(USER_ERRORS, match=f"{ids[1]}.png: label values \\[12\\] outside 0..11"):
        ds.prepare_camvid(str(seg), str(tmp_path / "root2"), str(tmp_path / "list2"))
    with pytest.raises(USER_ERRORS, match="no CamVid found"):
        ds.camvid_sources(str(tmp_path / "root2"))


def test_missing_source_folder_is_a_one_line_error(tmp_path, capsys):
    from deeplab.cli import run_main

    with pytest.raises(SystemExit) as e:
        run_main(prepare.main, ["--src", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CamVid folder") and "\n" not in err
