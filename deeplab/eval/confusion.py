"""The confusion matrix behind every segmentation metric here (VOC protocol).

One matrix is accumulated over a whole set (not a mean of per-image scores); rows are
ground truth, columns are predictions. Pixels whose ground truth is ``ignore_label`` are
skipped. Used by tools/eval.py, the CRF parameter search and the report.
"""
from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates ``num_classes`` x ``num_classes`` counts and derives the metrics."""

    def __init__(self, num_classes: int, ignore_label: int | None = 255):
        self.num_classes = int(num_classes)
        self.ignore_label = ignore_label
        self.mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (or any equally shaped pair of label arrays)."""
        gt = np.asarray(gt).ravel()
        pred = np.asarray(pred).ravel()
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
        keep = gt != self.ignore_label if self.ignore_label is not None else slice(None)
        gt, pred = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
        n = self.num_classes
        bad = (gt < 0) | (gt >= n) | (pred < 0) | (pred >= n)
        if bad.any():
            values = np.unique(np.concatenate([gt[bad], pred[bad]]))
            raise ValueError(f"label values {values.tolist()} outside 0..{n - 1}")
        self.mat += np.bincount(gt * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (from a worker process) to this one."""
        self.mat += other.mat
        return self

    def compute(self) -> dict:
        """Per-class IoU and accuracy, mean IoU, pixel accuracy, mean class accuracy, FW IoU.

        A class absent from both ground truth and prediction has IoU NaN and is left out
        of the means (as the VOC devkit does for classes with an empty union).
        """
        m = self.mat.astype(np.float64)
        tp = np.diag(m)
        gt_count = m.sum(axis=1)
        pred_count = m.sum(axis=0)
        union = gt_count + pred_count - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            class_acc = np.where(gt_count > 0, tp / gt_count, np.nan)
        total = m.sum()
        freq = gt_count / total if total else np.zeros_like(gt_count)
        present = ~np.isnan(iou)
        return {
            "iou": iou,
            "class_acc": class_acc,
            "mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total else float("nan"),
            "mean_class_acc": float(np.nanmean(class_acc)) if (gt_count > 0).any() else float("nan"),
            "fw_iou": float((freq[present] * iou[present]).sum()),
            "pixels": int(total),
        }

    def __str__(self) -> str:
        r = self.compute()
        return (f"mean IoU {100 * r['mean_iou']:.2f}  pixel acc {100 * r['pixel_acc']:.2f}  "
                f"mean class acc {100 * r['mean_class_acc']:.2f}  fw IoU {100 * r['fw_iou']:.2f}")
