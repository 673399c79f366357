"""ImageSegData loading (caffe/data/image_seg.py): list parsing and errors, the fork's
pad / crop / mirror keeping image and label aligned, per-epoch shuffling, sharding."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from caffe import CaffeError
from caffe.data.image_seg import ImageSegSource, Transform, read_list
from caffe.data.stream import Stream
from deeplab.labels import write_label
from caffe.proto import caffe_pb2 as pb

MEAN = (10.0, 20.0, 30.0)


def coded(h, w):
    """An image whose channels say where each pixel came from (B: label, G: x, R: y) and its label."""
    yy, xx = np.mgrid[0:h, 0:w]
    lab = ((yy * w + xx) % 200).astype(np.uint8)
    img = np.stack([lab, xx * 7 + 40, yy * 7 + 40], -1).astype(np.uint8)
    return img, lab


def check_aligned(data, label, t: Transform):
    """Every output pixel's image and label come from the same source pixel (or both are padding)."""
    b, g, r = data + np.array(MEAN, np.float32)[:, None, None]
    pad = label[0] == t.ignore_label
    assert np.all(b[~pad] == label[0][~pad]), "image and label moved apart"
    assert np.all(data[:, pad] == 0), "padding is not the mean"
    return g, r, pad


def test_pad_crop_keeps_alignment_and_pads_with_mean_and_ignore():
    """A 5x4 image with crop 6: padded at the bottom (1 row) and right (2 columns) with the
    mean (0 after subtraction) and ignore_label; the only crop is the whole padded image."""
    img, lab = coded(5, 4)
    t = Transform(crop=6, mean=MEAN, train=True)
    for seed in range(4):
        data, label, dims = t(img, lab, np.random.default_rng(seed))
        assert data.shape == (3, 6, 6) and label.shape == (1, 6, 6) and dims == (5, 4)
        assert np.all(label[0, 5, :] == 255) and np.all(label[0, :, 4:] == 255)
        assert np.array_equal(label[0, :5, :4], lab)
        g, r, pad = check_aligned(data, label, t)
        assert pad.sum() == 36 - 20


def test_random_crop_and_mirror_in_training():
    """Crops of a 12x15 image are windows of it, at varying offsets, sometimes mirrored;
    image and label stay aligned throughout."""
    img, lab = coded(12, 15)
    t = Transform(crop=8, mirror=True, mean=MEAN, train=True)
    offsets, mirrored = set(), set()
    for seed in range(24):
        data, label, _ = t(img, lab, np.random.default_rng(seed))
        g, r, pad = check_aligned(data, label, t)
        assert not pad.any()
        xs, ys = (g - 40) / 7, (r - 40) / 7
        flip = xs[0, 0] > xs[0, -1]
        step = -1 if flip else 1
        assert np.all(np.diff(xs, axis=1) == step) and np.all(np.diff(ys, axis=0) == 1)
        offsets.add((int(ys.min()), int(xs.min())))
        mirrored.add(bool(flip))
    assert len(offsets) > 5 and mirrored == {True, False}


def test_test_phase_crops_the_centre_without_randomness():
    img, lab = coded(12, 15)
    t = Transform(crop=8, mean=MEAN, train=False)
    data, label, _ = t(img, lab, np.random.default_rng(0))
    again, _, _ = t(img, lab, np.random.default_rng(99))
    assert np.array_equal(data, again)
    assert np.array_equal(label[0], lab[2:10, 3:11])  # offsets (12-8)//2, (15-8)//2


def write_set(root, n, size=(10, 12), mismatch=None):
    (root / "img").mkdir(exist_ok=True)
    (root / "lab").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        img, lab = coded(*size)
        img[..., 0] = i  # tells the items apart
        cv2.imwrite(str(root / "img" / f"{i}.png"), img)
        write_label(root / "lab" / f"{i}.png", lab if i != mismatch else lab[:-1])
        lines.append(f"/img/{i}.png /lab/{i}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")


def layer(root, extra="", transform="crop_size: 8", batch=2):
    text = (f'name: "data" type: "ImageSegData" top: "data" top: "label" top: "data_dim" '
            f'image_data_param {{ root_folder: "{root}" source: "{root}/list.txt" batch_size: {batch} {extra} }} '
            f'transform_param {{ mean_value: 10 mean_value: 20 mean_value: 30 {transform} }}')
    return text_format.Parse(text, pb.LayerParameter())


def test_list_errors_name_the_line(tmp_path):
    with pytest.raises(CaffeError, match="list file .*nope.txt not found"):
        read_list(str(tmp_path / "nope.txt"))
    write_set(tmp_path, 3)
    (tmp_path / "img" / "1.png").unlink()
    with pytest.raises(CaffeError, match=r"list.txt:2: .*img/1.png does not exist"):
        read_list(str(tmp_path / "list.txt"), str(tmp_path))
    (tmp_path / "list.txt").write_text("/img/0.png\n")
    with pytest.raises(CaffeError, match=r"list.txt:1: expected an image and a label"):
        read_list(str(tmp_path / "list.txt"), str(tmp_path))


def test_size_mismatch_and_unreadable_image_name_the_line(tmp_path):
    write_set(tmp_path, 3, mismatch=2)
    (tmp_path / "img" / "1.png").write_bytes(b"not a png")
    src = ImageSegSource(layer(tmp_path, transform="crop_size: 8"), "TRAIN", seed=0)
    errors = {str(src[p]) for p in range(3) if isinstance(src[p], CaffeError)}
    assert any("list.txt:2: " in e and "img/1.png is not a readable image" in e for e in errors)
    assert any("list.txt:3: label" in e and "is 9x12 but image" in e for e in errors)
    stream = Stream(src)
    with pytest.raises(CaffeError, match="list.txt:"):
        for b in range(2):
            stream(b)


def test_batches_tops_and_unlabelled_lists(tmp_path):
    write_set(tmp_path, 4)
    batch = Stream(ImageSegSource(layer(tmp_path), "TRAIN", seed=1))(0)
    assert batch["data"].shape == (2, 3, 8, 8) and batch["label"].shape == (2, 1, 8, 8)
    assert batch["data_dim"].tolist() == [[[[8.0, 8.0]]]] * 2  # min(crop, image size), as the fork
    full = Stream(ImageSegSource(layer(tmp_path, transform=""), "TEST"))(0)
    assert full["data"].shape == (2, 3, 10, 12) and full["data_dim"][0].flatten().tolist() == [10, 12]
    (tmp_path / "list.txt").write_text("/img/0.png\n/img/1.png\n")
    src = ImageSegSource(layer(tmp_path, extra="has_label: false"), "TEST")
    assert (Stream(src)(0)["label"] == 255).all()


def test_shuffle_is_a_permutation_per_epoch_from_the_seed(tmp_path):
    write_set(tmp_path, 6)
    src = ImageSegSource(layer(tmp_path, extra="shuffle: true"), "TRAIN", seed=5)
    epochs = [[src.item_index(e * 6 + k) for k in range(6)] for e in range(3)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    again = ImageSegSource(layer(tmp_path, extra="shuffle: true"), "TRAIN", seed=5)
    assert [again.item_index(p) for p in range(18)] == sum(epochs, [])
    plain = ImageSegSource(layer(tmp_path), "TRAIN", seed=5)
    assert [plain.item_index(p) for p in range(8)] == [0, 1, 2, 3, 4, 5, 0, 1]


def test_two_shards_see_the_combined_batch_and_workers_change_nothing(tmp_path):
    """Ranks 0 and 1 with batch 2 together get exactly the samples (and crops, mirrors) of one
    process with batch 4; loading in a worker process gives the same batches."""
    write_set(tmp_path, 5)
    extra, tr = "shuffle: true", "crop_size: 8 mirror: true"
    one = Stream(ImageSegSource(layer(tmp_path, extra, tr, batch=4), "TRAIN", seed=2), workers=1)
    ranks = [Stream(ImageSegSource(layer(tmp_path, extra, tr, batch=2), "TRAIN", seed=2), r, 2) for r in range(2)]
    for b in range(3):
        whole = one(b)
        parts = [s(b) for s in ranks]
        for top in ("data", "label"):
            assert np.array_equal(whole[top].numpy(), np.concatenate([p[top].numpy() for p in parts]))
    one.close()
