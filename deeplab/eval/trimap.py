"""Trimap evaluation (the paper's Figure 5): accuracy in a band around void pixels.

The band of width ``w`` is every non-void pixel whose Chebyshev distance to the nearest void
pixel is at most ``w`` -- the void mask dilated by a (2w+1) x (2w+1) square, void itself left
out. One distance transform per image gives every pixel's distance; a single bincount over
(distance, ground truth, prediction) then holds all widths at once, and a cumulative sum over
the distance axis turns "exactly at distance d" into "within w".
"""
from __future__ import annotations

import cv2
import numpy as np

from ..cli import parse_range
from .confusion import ConfusionMatrix

MAX_WIDTH = 254


def parse_widths(text: str | None) -> list[int]:
    """Band widths in the pipeline's one range syntax (deeplab.cli.parse_range): ``1:40``
    (inclusive), ``1:2:40`` (start:step:stop), ``2,5,10``; ``off``/``none``/``0`` give []."""
    if text is None or text.strip().lower() in ("", "off", "none", "0"):
        return []
    try:
        widths = parse_range(text, integer=True)
    except ValueError as e:
        raise ValueError(f"band widths: {e}") from None
    if min(widths) < 1 or max(widths) > MAX_WIDTH:
        raise ValueError(f"band widths must lie in 1..{MAX_WIDTH}; got {text!r}")
    return widths


def void_distance(gt: np.ndarray, ignore_label: int) -> np.ndarray:
    """Chebyshev distance (float32) of every pixel to the nearest void pixel; 0 on void.

    Pixels outside the image do not count as void; an image without void pixels gets a
    huge distance everywhere (so it contributes to no band).
    """
    nonvoid = (gt != ignore_label).view(np.uint8)
    return cv2.distanceTransform(nonvoid, cv2.DIST_C, 3)


def band_mask(gt: np.ndarray, ignore_label: int, width: int) -> np.ndarray:
    """Boolean mask of the trimap band of ``width`` (by definition: a dilation, for checks)."""
    void = (gt == ignore_label).astype(np.uint8)
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(void, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool) & (void == 0)


class TrimapAccumulator:
    """Confusion matrices for every band width, accumulated image by image in one pass."""

    def __init__(self, num_classes: int, widths: list[int], ignore_label: int = 255):
        if not widths:
            raise ValueError("no band widths given")
        self.num_classes = int(num_classes)
        self.widths = sorted(int(w) for w in widths)
        self.max_width = self.widths[-1]
        self.ignore_label = ignore_label
        # counts[d - 1] = confusion of the pixels at distance exactly d (1..max_width)
        self.counts = np.zeros((self.max_width, self.num_classes, self.num_classes), np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray, dist: np.ndarray | None = None,
               pair_code: np.ndarray | None = None) -> None:
        """Add one image; ``gt`` and ``pred`` must already hold valid class indices off void.

        ``dist`` (from :func:`void_distance`) and ``pair_code`` (``gt * C + pred``) may be
        passed when the caller has them already.
        """
        n = self.num_classes
        if dist is None:
            dist = void_distance(gt, self.ignore_label)
        if pair_code is None:
            pair_code = gt.astype(np.int32) * n + pred
        d = cv2.convertScaleAbs(dist)  # whole distances to uint8, saturating at 255
        d -= 1  # distance d -> bin d - 1; void (0) wraps to 255, outside every band
        band = d < self.max_width
        code = d[band].astype(np.int32) * (n * n) + pair_code[band]
        self.counts += np.bincount(code, minlength=self.counts.size).reshape(self.counts.shape)

    def merge(self, other: "TrimapAccumulator") -> "TrimapAccumulator":
        """Add another accumulator's counts (same widths) to this one."""
        self.counts += other.counts
        return self

    def matrices(self) -> np.ndarray:
        """len(widths) x C x C confusion matrices, one per requested width."""
        within = np.cumsum(self.counts, axis=0)
        return within[np.asarray(self.widths) - 1]

    def compute(self) -> dict:
        """Per width: mean IoU, pixel accuracy, pixel count and per-class IoU (NaN where empty)."""
        out = {"widths": list(self.widths), "mean_iou": [], "pixel_acc": [], "mean_class_acc": [],
               "pixels": [], "iou": []}
        for mat in self.matrices():
            cm = ConfusionMatrix(self.num_classes, self.ignore_label)
            cm.mat = mat
            r = cm.compute()
            for key in ("mean_iou", "pixel_acc", "mean_class_acc", "pixels"):
                out[key].append(r[key])
            out["iou"].append(r["iou"])
        return out
