"""Softmax, SoftmaxWithLoss (ignore_label, Caffe's normalisation modes) and the fork's SegAccuracy."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import Layer, LossLayer, register

FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def _repeated_or_optional(msg, field):
    """Values of a field that is repeated in some schemas and optional in others."""
    value = getattr(msg, field)
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        return [int(v) for v in value]
    return [int(value)] if msg.HasField(field) else []


@register("Softmax")
class Softmax(Layer):
    """Softmax over ``softmax_param.axis`` (default 1, the channels)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        self.axis = int(self.param.softmax_param.axis) % len(bottom_shapes[0])
        return list(bottom_shapes)

    def forward(self, x):
        return (torch.softmax(x, dim=self.axis),)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """Cross-entropy of softmax(scores) against integer labels, Caffe's way.

    loss = -sum over non-ignored positions of log p[label] / normaliser, where the normaliser
    is (loss_param.normalization) FULL: N*H*W, VALID (default): the non-ignored count,
    BATCH_SIZE: N, NONE: 1 — never below 1. Classes lie on ``softmax_param.axis`` (default 1);
    N is the product of the axes before it, H*W of those after it. The deprecated
    ``normalize: false`` means BATCH_SIZE. ignore_label comes from loss_param or the fork's
    softmaxloss_param. An optional second top is the softmax probability.

    The SegNet forks' ``weight_by_label_freqs`` (their softmax_loss_layer.cpp): each
    non-ignored position's -log p[label] is multiplied by ``class_weighting[label]`` (one
    value per class, checked against C); the normaliser stays the unweighted count above,
    and the gradient, p - onehot, is scaled by the same weight. ``class_weighting`` without
    ``weight_by_label_freqs`` is ignored, as there.
    """

    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom_shapes):
        lp = self.param.loss_param
        axes, axis = len(bottom_shapes[0]), int(self.param.softmax_param.axis)
        if not -axes <= axis < axes:
            raise self.error(f"softmax_param axis {axis} is out of range for {axes}-axis scores {bottom_shapes[0]}")
        self.axis = axis % axes
        self.ignore = None
        if lp.HasField("ignore_label"):
            self.ignore = int(lp.ignore_label)
        elif self.param.HasField("softmaxloss_param"):
            values = _repeated_or_optional(self.param.softmaxloss_param, "ignore_label")
            self.ignore = values[0] if values else None
        if lp.HasField("normalize") and not lp.HasField("normalization"):
            self.mode = VALID if lp.normalize else BATCH_SIZE
        else:
            self.mode = int(lp.normalization)
        scores, label = bottom_shapes
        c = scores[self.axis]
        self.register_buffer("class_weights", None, persistent=False)
        if lp.weight_by_label_freqs:
            weights = [float(v) for v in lp.class_weighting]
            if c is None or len(weights) != c:
                raise self.error(f"weight_by_label_freqs needs one class_weighting value per class: got "
                                 f"{len(weights)} for {c} classes")
            self.class_weights = torch.tensor(weights)
        if None not in scores and None not in label:
            count, expect = math.prod(label), math.prod(scores) // max(c, 1)
            if count != expect:   # outer_num_ * inner_num_: the scores' count without the class axis
                raise self.error(f"label count {count} (shape {label}) must equal N*H*W = {expect} "
                                 f"of the scores {scores} (softmax axis {self.axis})")
        if self.top_count > 1:
            raise self.error("a second (probability) top is refused by BVLC Caffe in every form (without "
                             "loss weights the loss layer adds one for two tops; with two, its inner Softmax "
                             "layer gets both for its one top): add a Softmax layer for the probabilities")
        return [()]

    def forward(self, scores, label):
        c = scores.shape[self.axis]
        n = math.prod(scores.shape[:self.axis])     # Caffe's outer_num_ (N for axis 1)
        logp = F.log_softmax(scores.float(), dim=self.axis).reshape(n, c, -1)
        lab = label.reshape(n, -1).long()
        valid = lab != self.ignore if self.ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        bad = valid & ((lab < 0) | (lab >= c))
        if bool(bad.any()):
            values = torch.unique(lab[bad]).tolist()
            raise self.error(f"label values {values[:8]} are outside 0..{c - 1} and not the ignore_label")
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        nll = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        if self.class_weights is not None:
            nll = nll * self.class_weights.to(nll.dtype)[safe]
        total = (nll * valid).sum()
        if self.mode == FULL:
            norm = float(lab.numel())
        elif self.mode == VALID:
            norm = valid.sum().float() if self.ignore is not None else float(lab.numel())
        elif self.mode == BATCH_SIZE:
            norm = float(n)
        else:
            norm = 1.0
        loss = total / (torch.clamp(norm, min=1.0) if torch.is_tensor(norm) else max(norm, 1.0))
        return (loss,)


@register("SegAccuracy")
class SegAccuracy(Layer):
    """The fork's segmentation accuracy on the batch: top = [pixel accuracy, mean class
    accuracy, mean IoU] (shape 1x1x1x3), over pixels whose label is not an ignore_label.
    Means are over classes present in the label (accuracy) or in label or prediction (IoU)."""

    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        self.ignore = _repeated_or_optional(self.param.seg_accuracy_param, "ignore_label")
        return [(1, 1, 1, 3)]

    @torch.no_grad()
    def forward(self, scores, label):
        c = scores.shape[1]
        pred = scores.argmax(dim=1).reshape(-1)
        lab = label.reshape(-1).long()
        keep = torch.ones_like(lab, dtype=torch.bool)
        for v in self.ignore:
            keep &= lab != v
        keep &= (lab >= 0) & (lab < c)
        pred, lab = pred[keep], lab[keep]
        conf = torch.bincount(lab * c + pred, minlength=c * c).reshape(c, c).double()
        tp = conf.diag()
        gt, pr = conf.sum(1), conf.sum(0)
        total = conf.sum()
        acc = tp.sum() / total if total > 0 else total
        recall = tp[gt > 0] / gt[gt > 0]
        union = gt + pr - tp
        iou = tp[union > 0] / union[union > 0]
        vals = [acc, recall.mean() if recall.numel() else acc * 0, iou.mean() if iou.numel() else acc * 0]
        return (torch.stack(vals).to(scores.dtype).reshape(1, 1, 1, 3),)
