#!/usr/bin/env python
"""Benchmark: evaluation of the 1449 VOC val labels with all 40 trimap widths.

Predictions are the ground truth perturbed (shifted 4 px right and 3 px down, a 40 x 40 block
of each image relabelled, void predicted as background), written as PNGs to a temporary folder.
Timed in this one run, all single-process and all reading the same PNGs, taking turns on
blocks of 50 images (the machine is shared, so load elsewhere falls on every method alike):

  mean IoU only        deeplab.eval.evaluate without trimap
  trimap, one pass     deeplab.eval.evaluate with widths 1..40 (one distance transform per image)
  trimap, dilation     a straightforward loop: per image, per width, dilate the void mask with a
                       (2w+1)^2 square and update a confusion matrix with the band's pixels

Targets: one pass >= 10x faster than the dilation loop; trimap adds <= 3x over mean IoU only.
The same three are also timed on labels already in memory (compute only, no PNG decoding).
Usage: .venv/bin/python bench/bench_eval.py [--n 1449] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from tqdm import tqdm

from deeplab.eval.confusion import ConfusionMatrix
from deeplab.eval.evaluate import evaluate, image_codes, image_confusion, read_ids
from deeplab.eval.trimap import TrimapAccumulator, void_distance
from deeplab.labels import read_label, write_label

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "voc12")
WIDTHS = list(range(1, 41))


def perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shifted ground truth with one wrong block; void predicted as background."""
    p = np.roll(np.roll(gt, 4, axis=1), 3, axis=0)
    p[p == 255] = 0
    y, x = rng.integers(0, max(1, gt.shape[0] - 40)), rng.integers(0, max(1, gt.shape[1] - 40))
    p[y:y + 40, x:x + 40] = rng.integers(0, 21)
    return p


def dilation_widths(gt: np.ndarray, pred: np.ndarray, cms: dict) -> None:
    """Reference: per width, dilate the void mask and update that width's confusion matrix."""
    void = (gt == 255).astype(np.uint8)
    for w in WIDTHS:
        band = cv2.dilate(void, np.ones((2 * w + 1, 2 * w + 1), np.uint8)).astype(bool) & (void == 0)
        cms[w].update(gt[band], pred[band])


def dilation_loop(pred_dir: str, gt_dir: str, ids: list[str], cms: dict) -> None:
    """Reference evaluation from the PNGs: the library's checks, then :func:`dilation_widths`."""
    for i in ids:
        gt, pred = read_label(os.path.join(gt_dir, i + ".png")), read_label(os.path.join(pred_dir, i + ".png"))
        image_confusion(gt, pred, 21, 255, i)
        dilation_widths(gt, pred, cms)


def timed(fn):
    """(seconds, result) of calling ``fn``."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--n", type=int, default=1449, help="number of val images (default all 1449)")
    ap.add_argument("--jobs", type=int, default=2, help="also time the one-pass evaluation with this many workers")
    args = ap.parse_args()
    gt_dir = os.path.join(SHARED, "val_labels")
    if not os.path.isdir(gt_dir):
        print(f"needs {gt_dir}", file=sys.stderr)
        return 1
    ids = read_ids(os.path.join(SHARED, "lists", "val.txt"))[:args.n]
    rng = np.random.default_rng(0)
    times = dict.fromkeys(("read", "miou", "one", "ref", "c_miou", "c_one", "c_ref"), 0.0)
    cms = {w: ConfusionMatrix(21) for w in WIDTHS}
    cms_mem = {w: ConfusionMatrix(21) for w in WIDTHS}
    tri_mem = TrimapAccumulator(21, WIDTHS)
    with tempfile.TemporaryDirectory() as pred_dir:
        for i in tqdm(ids, desc="writing perturbed predictions", unit="img", leave=False):
            write_label(os.path.join(pred_dir, i + ".png"), perturb(read_label(os.path.join(gt_dir, i + ".png")), rng))
        # The machine is shared: the methods take turns on blocks of 50 images, so a burst of
        # load elsewhere falls on all of them alike.
        parts = {"miou": [], "one": []}
        for k in tqdm(range(0, len(ids), 50), desc="timing blocks of 50", leave=False):
            block = ids[k:k + 50]
            t, labels = timed(lambda: [(read_label(os.path.join(gt_dir, i + ".png")),
                                        read_label(os.path.join(pred_dir, i + ".png"))) for i in block])
            times["read"] += t
            t, r = timed(lambda: evaluate(pred_dir, gt_dir, block, 21))
            times["miou"] += t
            parts["miou"].append(r)
            t, r = timed(lambda: evaluate(pred_dir, gt_dir, block, 21, trimap_widths=WIDTHS))
            times["one"] += t
            parts["one"].append(r)
            times["ref"] += timed(lambda: dilation_loop(pred_dir, gt_dir, block, cms))[0]
            # compute only, labels already in memory
            times["c_miou"] += timed(lambda: [image_codes(g, p, 21, 255) for g, p in labels])[0]
            times["c_one"] += timed(lambda: [tri_mem.update(g, p, void_distance(g, 255), image_codes(g, p, 21, 255)[0])
                                             for g, p in labels])[0]
            times["c_ref"] += timed(lambda: [(image_codes(g, p, 21, 255), dilation_widths(g, p, cms_mem))
                                             for g, p in labels])[0]
        t_par, full = timed(lambda: evaluate(pred_dir, gt_dir, ids, 21, trimap_widths=WIDTHS, jobs=args.jobs))
    ref = [cms[w].compute()["mean_iou"] for w in WIDTHS]
    agree = (np.allclose(full["trimap"]["mean_iou"], ref, rtol=0, atol=1e-12)
             and np.array_equal(tri_mem.matrices(), np.stack([cms_mem[w].mat for w in WIDTHS]))
             and sum(p["pixels"] for p in parts["one"]) == full["pixels"])
    n = len(ids)
    print(f"{n} VOC val images, trimap widths 1..40, single process unless noted")
    print(f"  reading both PNGs only        {times['read']:7.2f} s")
    print(f"  mean IoU only                 {times['miou']:7.2f} s   (mean IoU {100 * full['mean_iou']:.2f})")
    print(f"  trimap, one pass              {times['one']:7.2f} s")
    print(f"  trimap, per-width dilation    {times['ref']:7.2f} s")
    print(f"  trimap, one pass, -j {args.jobs:<2}       {t_par:7.2f} s   (whole list at once)")
    print(f"  results agree: {agree}  (mean IoU at w=1 {100 * ref[0]:.2f}, w=40 {100 * ref[-1]:.2f})")
    print(f"  one pass vs dilation loop:  {times['ref'] / times['one']:5.1f}x faster (target >= 10x)")
    print(f"  trimap cost over mean IoU:  {times['one'] / times['miou']:5.2f}x (target <= 3x)")
    print(f"  compute only (labels in memory): mean IoU {1e3 * times['c_miou'] / n:.2f} ms/img, "
          f"one pass {1e3 * times['c_one'] / n:.2f} ms/img, dilation {1e3 * times['c_ref'] / n:.2f} ms/img -> "
          f"{times['c_ref'] / times['c_one']:.1f}x faster, trimap adds {times['c_one'] / times['c_miou']:.2f}x")
    return 0 if agree else 1

if __name__ == "__main__":
    sys.exit(main())
