"""VOC 2012 + SBD preparation on miniature archives served from file:// addresses.

The miniature archives use real image ids (../shared/data/voc12/lists) and the real VOC val
labels, so the produced lists and SegmentationClassAug are checked against the real ones.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import shared_path
from deeplab import USER_ERRORS
from deeplab.data import datasets as ds
from deeplab.data.download import download
from deeplab.labels import read_label, voc_palette, write_label

from deeplab.commands import prepare_voc12 as prepare  # noqa: E402


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _png(label: np.ndarray) -> bytes:
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(h: int = 6, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture
def mini(tmp_path):
    """Miniature VOCtrainval tar and SBD tgz with real ids; returns their paths and the id sets."""
    val_real = ds.read_ids(shared_path("data", "voc12", "lists", "val.txt"))
    aug_real = ds.read_ids(shared_path("data", "voc12", "lists", "train_aug.txt"))
    val = val_real[:3]
    voc_train = aug_real[:2]
    sbd_train = aug_real[100:103]
    sbd_val = [aug_real[200], val[0]]  # SBD's val overlaps VOC val: must not reach train_aug
    rng = np.random.default_rng(0)
    sbd_labels = {i: rng.integers(0, 21, (7, 9)).astype(np.uint8) for i in sbd_train + sbd_val}
    train_labels = {i: np.where(rng.random((6, 8)) < 0.2, 255, rng.integers(0, 21, (6, 8))).astype(np.uint8)
                    for i in voc_train}
    voc_tar = tmp_path / "src" / "VOCtrainval_11-May-2012.tar"
    voc_tar.parent.mkdir()
    with tarfile.open(voc_tar, "w") as t:
        base = "VOCdevkit/VOC2012/"
        for i in sorted(set(val + voc_train + sbd_train + sbd_val)):
            _add(t, f"{base}JPEGImages/{i}.jpg", _jpg())
        for i in val:
            _add(t, f"{base}SegmentationClass/{i}.png",
                 shared_path("data", "voc12", "val_labels", f"{i}.png").read_bytes())
        for i, lab in train_labels.items():
            _add(t, f"{base}SegmentationClass/{i}.png", _png(lab))
        _add(t, f"{base}ImageSets/Segmentation/train.txt", "".join(f"{i}\n" for i in voc_train).encode())
        _add(t, f"{base}ImageSets/Segmentation/val.txt", "".join(f"{i}\n" for i in val).encode())
        _add(t, f"{base}Annotations/{val[0]}.xml", b"<annotation/>")  # not extracted
    sbd_tgz = tmp_path / "src" / "benchmark.tgz"
    with tarfile.open(sbd_tgz, "w:gz") as t:
        base = "benchmark_RELEASE/dataset/"
        for i, lab in sbd_labels.items():
            buf = io.BytesIO()
            scipy.io.savemat(buf, {"GTcls": {"Segmentation": lab, "Boundaries": np.zeros((21, 1), object),
                                             "CategoriesPresent": np.unique(lab[lab > 0]).astype(np.uint8)}})
            _add(t, f"{base}cls/{i}.mat", buf.getvalue())
        _add(t, f"{base}train.txt", "".join(f"{i}\n" for i in sbd_train).encode())
        _add(t, f"{base}val.txt", "".join(f"{i}\n" for i in sbd_val).encode())
    return dict(voc_tar=voc_tar, sbd_tgz=sbd_tgz, val=val, voc_train=voc_train, sbd_train=sbd_train,
                sbd_val=sbd_val, sbd_labels=sbd_labels, train_labels=train_labels, val_real=val_real,
                aug_real=aug_real, out=tmp_path / "out")


def _run(m, **over):
    out = m["out"]
    args = dict(voc_url=m["voc_tar"].as_uri(), voc_md5=_md5(m["voc_tar"]), sbd_url=m["sbd_tgz"].as_uri(),
                sbd_md5=_md5(m["sbd_tgz"]))
    args.update(over)
    argv = ["--root", str(out / "VOC2012"), "--list-dir", str(out / "list"), "--downloads", str(out / "dl")]
    for k, v in args.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return prepare.main(argv)


def test_prepare_lists_and_labels_match_the_release(mini):
    assert _run(mini) == 0
    out, val = mini["out"], mini["val"]
    expected_aug = sorted(set(mini["voc_train"] + mini["sbd_train"] + mini["sbd_val"]) - set(val))
    lists = {n: ds.read_ids(out / "list" / f"{n}_id.txt") for n in ("train", "val", "train_aug", "trainval_aug")}
    assert lists["train_aug"] == expected_aug and val[0] not in lists["train_aug"]
    assert lists["val"] == sorted(val) and lists["train"] == sorted(mini["voc_train"])
    assert lists["trainval_aug"] == sorted(set(expected_aug) | set(val))
    assert set(lists["train_aug"]) <= set(mini["aug_real"]) and set(lists["val"]) <= set(mini["val_real"])
    assert not os.path.exists(out / "list" / "test.txt")  # no test archive given
    first = (out / "list" / "train_aug.txt").read_text().splitlines()[0]
    assert first == f"/JPEGImages/{expected_aug[0]}.jpg /SegmentationClassAug/{expected_aug[0]}.png"
    root = out / "VOC2012"
    for line in (out / "list" / "trainval_aug.txt").read_text().splitlines():
        img, lab = line.split()
        assert (root / img.lstrip("/")).is_file() and (root / lab.lstrip("/")).is_file()
    # VOC's val labels pass through unchanged: values (void band included) and palette.
    for i in val:
        ours = Image.open(root / "SegmentationClassAug" / f"{i}.png")
        real = Image.open(shared_path("data", "voc12", "val_labels", f"{i}.png"))
        assert ours.mode == "P"
        np.testing.assert_array_equal(np.array(ours), np.array(real))
        assert ours.getpalette()[:63] == real.getpalette()[:63]
        assert ours.getpalette()[255 * 3:256 * 3] == [224, 224, 192]
    # SBD-only ids come from the .mat files; VOC train ids keep VOC's own label.
    for i in mini["sbd_train"]:
        np.testing.assert_array_equal(read_label(root / "SegmentationClassAug" / f"{i}.png"), mini["sbd_labels"][i])
    for i, lab in mini["train_labels"].items():
        np.testing.assert_array_equal(read_label(root / "SegmentationClassAug" / f"{i}.png"), lab)
    assert not (root / "Annotations").exists()


def test_test_archive_adds_an_image_only_test_list(mini, tmp_path):
    test_tar = tmp_path / "src" / "VOC2012test.tar"
    ids = ["2008_000001", "2008_000004"]
    with tarfile.open(test_tar, "w") as t:
        for i in ids:
            _add(t, f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg", _jpg())
        _add(t, "VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt", "".join(f"{i}\n" for i in ids).encode())
    _run(mini, test_tar=str(test_tar))
    lines = (mini["out"] / "list" / "test.txt").read_text().splitlines()
    assert lines == [f"/JPEGImages/{i}.jpg" for i in ids]
    assert all((mini["out"] / "VOC2012" / "JPEGImages" / f"{i}.jpg").is_file() for i in ids)


def test_rerun_keeps_outputs_and_wrong_md5_is_one_clear_error(mini, capsys):
    _run(mini)
    target = mini["out"] / "VOC2012" / "SegmentationClassAug" / f"{mini['sbd_train'][0]}.png"
    stamp = os.stat(target).st_mtime_ns
    _run(mini)
    assert os.stat(target).st_mtime_ns == stamp
    with pytest.raises(USER_ERRORS, match="md5 checksum mismatch"):
        _run(mini, sbd_md5="0" * 32)  # the kept file now fails its check and is downloaded again
    assert not os.path.exists(mini["out"] / "dl" / "benchmark.tgz.part")


def test_download_resumes_a_partial_file(tmp_path):
    src = tmp_path / "blob.bin"
    data = np.random.default_rng(1).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()
    src.write_bytes(data)
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    (tmp_path / "dl" / "blob.bin.part").write_bytes(data[:1_234_567])
    digest = download(src.as_uri(), dest, sha256=hashlib.sha256(data).hexdigest(), quiet=True)
    assert dest.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    # A corrupt partial file fails the checksum and is discarded for the next run.
    dest.unlink()
    (tmp_path / "dl" / "blob.bin.part").write_bytes(b"x" * 1000)
    with pytest.raises(USER_ERRORS, match="checksum mismatch"):
        download(src.as_uri(), dest, md5=hashlib.md5(data).hexdigest(), quiet=True)
    assert not dest.exists() and not (tmp_path / "dl" / "blob.bin.part").exists()


def test_offline_gives_a_one_line_message(tmp_path):
    with pytest.raises(USER_ERRORS, match="cannot reach 127.0.0.1:9") as e:
        download("http://127.0.0.1:9/VOCtrainval_11-May-2012.tar", tmp_path / "x.tar", quiet=True, timeout=5)
    assert "\n" not in str(e.value)


def test_bad_sbd_file_names_the_file(tmp_path):
    bad = tmp_path / "2008_000002.mat"
    scipy.io.savemat(bad, {"something": np.zeros((2, 2))})
    with pytest.raises(USER_ERRORS, match="2008_000002.mat: no GTcls.Segmentation"):
        ds.sbd_label(bad)
    scipy.io.savemat(bad, {"GTcls": {"Segmentation": np.full((2, 2), 40, np.uint8)}})
    with pytest.raises(USER_ERRORS, match="outside 0..20"):
        ds.sbd_label(bad)
    png = tmp_path / "x.png"
    write_label(png, np.full((2, 2), 30, np.uint8))
    with pytest.raises(USER_ERRORS, match="x.png: unexpected label values \\[30\\]"):
        ds.voc_label(png)


def test_list_algebra_on_the_real_ids():
    val = ds.read_ids(shared_path("data", "voc12", "lists", "val.txt"))
    aug = ds.read_ids(shared_path("data", "voc12", "lists", "train_aug.txt"))
    assert (len(val), len(aug)) == (1449, 10582)
    # train_aug already excludes val; putting val into SBD's lists must not change that.
    lists = ds.voc_lists([], val, aug, val[:500])
    assert lists["train_aug"] == aug  # the release's list is sorted the same way
    assert len(lists["trainval_aug"]) == 12031
