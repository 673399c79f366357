"""Trimap bands: a hand-drawn label, borders, the one-pass accumulator against dilation, real VOC."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_path

from deeplab.eval.confusion import ConfusionMatrix
from deeplab.eval.evaluate import evaluate, read_ids
from deeplab.eval.trimap import TrimapAccumulator, band_mask, parse_widths, void_distance
from deeplab.labels import read_label, write_label

V = 255
HAND_GT = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, V, 1, 1, 1],
    [0, 0, 0, V, 1, 1, 1],
    [0, 0, 0, 0, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 0],
], np.uint8)
BAND1 = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [0, 0, 1, 1, 1, 0, 0],
    [0, 0, 1, 0, 1, 0, 0],
    [0, 0, 1, 0, 1, 0, 0],
    [0, 0, 1, 1, 1, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
], bool)
BAND2 = np.array([
    [0, 1, 1, 1, 1, 1, 0],
    [0, 1, 1, 1, 1, 1, 0],
    [0, 1, 1, 0, 1, 1, 0],
    [0, 1, 1, 0, 1, 1, 0],
    [0, 1, 1, 1, 1, 1, 0],
    [0, 1, 1, 1, 1, 1, 0],
], bool)


def _hand_pred():
    pred = np.where(HAND_GT == V, 0, HAND_GT).astype(np.uint8)
    pred[2, 4] = 0  # one class-1 pixel next to the void predicted as background
    return pred


def test_hand_drawn_bands():
    for w, expected in ((1, BAND1), (2, BAND2)):
        assert np.array_equal(band_mask(HAND_GT, V, w), expected)
        d = void_distance(HAND_GT, V)
        assert np.array_equal((d > 0) & (d <= w), expected)


def test_hand_drawn_band_metrics():
    acc = TrimapAccumulator(2, [1, 2], V)
    acc.update(HAND_GT, _hand_pred())
    m1, m2 = acc.matrices()
    # w=1: 10 band pixels, 7 background, 3 class 1 of which one is wrong
    assert m1.tolist() == [[7, 0], [1, 2]]
    # w=2: 28 band pixels, 6 of class 1
    assert m2.tolist() == [[22, 0], [1, 5]]
    r = acc.compute()
    assert r["pixel_acc"] == pytest.approx([9 / 10, 27 / 28])
    assert r["mean_iou"] == pytest.approx([(7 / 8 + 2 / 3) / 2, (22 / 23 + 5 / 6) / 2])
    assert r["pixels"] == [10, 28]


def test_border_is_not_void_and_no_void_means_empty_band():
    gt = np.zeros((4, 4), np.uint8)
    gt[0, 0] = V
    expected = np.zeros((4, 4), bool)
    expected[0, 1] = expected[1, 0] = expected[1, 1] = True
    d = void_distance(gt, V)
    assert np.array_equal((d > 0) & (d <= 1), expected)
    acc = TrimapAccumulator(3, [1, 40], V)
    acc.update(np.ones((5, 5), np.uint8), np.ones((5, 5), np.uint8))
    assert acc.counts.sum() == 0


def test_one_pass_equals_per_width_dilation_on_random_labels():
    rng = np.random.default_rng(0)
    widths = [1, 2, 3, 5, 8]
    acc = TrimapAccumulator(4, widths, V)
    ref = {w: ConfusionMatrix(4, V) for w in widths}
    for _ in range(6):
        gt = rng.integers(0, 4, (23, 31)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.03] = V
        gt[:, 0] = np.where(rng.random(23) < 0.5, V, gt[:, 0])  # voids on the border too
        pred = rng.integers(0, 4, gt.shape).astype(np.uint8)
        acc.update(gt, pred)
        for w in widths:
            m = band_mask(gt, V, w)
            ref[w].update(gt[m], pred[m])
    for w, mat in zip(widths, acc.matrices()):
        assert np.array_equal(mat, ref[w].mat), w


def test_parse_widths():
    assert parse_widths("1:40") == list(range(1, 41))
    assert parse_widths("1:4:9") == [1, 5, 9]   # start:step:stop, the one range syntax
    assert parse_widths("10,2,5,2") == [2, 5, 10]
    assert parse_widths("off") == [] and parse_widths("0") == []
    for bad in ("a", "0:3", "1:300", "3:1", "1:5:0", "1:9:4"):
        with pytest.raises(ValueError):
            parse_widths(bad)


def test_voc_known_band_perturbation(tmp_path):
    """Every pixel within 2 px of void predicted wrong: 0 inside w <= 2, 1 - |band2| / |band w| beyond."""
    labels = shared_path("data", "voc12", "val_labels")
    ids = read_ids(shared_path("data", "voc12", "lists", "val.txt"))[:50]
    widths = [1, 2, 3, 10, 40]
    sizes = dict.fromkeys(widths, 0)
    for i in ids:
        g = read_label(labels / f"{i}.png")
        for w in widths:
            sizes[w] += int(band_mask(g, V, w).sum())
        p = np.where(band_mask(g, V, 2), (g.astype(int) + 1) % 21, g)
        p[g == V] = 0
        write_label(tmp_path / f"{i}.png", p.astype(np.uint8))
    r = evaluate(tmp_path, labels, ids, 21, trimap_widths=widths)["trimap"]
    assert r["pixels"] == [sizes[w] for w in widths]
    assert r["pixel_acc"][:2] == [0.0, 0.0]
    assert r["mean_iou"][:2] == [0.0, 0.0]
    assert r["pixel_acc"][2:] == pytest.approx([1 - sizes[2] / sizes[w] for w in widths[2:]])
