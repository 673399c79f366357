"""Loss layers: Softmax and SoftmaxWithLoss (ignore_label, Caffe's normalisation modes), and
BVLC's other losses: EuclideanLoss, SigmoidCrossEntropyLoss, ContrastiveLoss, HingeLoss,
InfogainLoss, MultinomialLogisticLoss. Each loss top is a scalar (a 0-axis blob); no gradient
flows to labels, targets or the infogain matrix (Caffe refuses those).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Layer, LossLayer, register
from .. import checks
from .shape_ops import canonical_axis, count

FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3


def repeated_or_optional(msg, field):
    """Values of a field that is repeated in some schemas and optional in others."""
    value = getattr(msg, field)
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        return [int(v) for v in value]
    return [int(value)] if msg.HasField(field) else []


@register("Softmax")
class Softmax(Layer):
    """Softmax over ``softmax_param.axis`` (default 1, the channels)."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)
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

    num_axes_on_reshape = "setup"
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom_shapes):
        lp = self.param.loss_param
        self.axis = canonical_axis(self.param.softmax_param.axis, len(bottom_shapes[0]), self)
        self.ignore = None
        if lp.HasField("ignore_label"):
            self.ignore = int(lp.ignore_label)
        elif self.param.HasField("softmaxloss_param"):
            values = repeated_or_optional(self.param.softmaxloss_param, "ignore_label")
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
        checks.check(bad.any(), lambda: self._label_error(label, n, c))
        safe = torch.where(valid & ~bad, lab, torch.zeros_like(lab))
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

    def _label_error(self, label, n: int, c: int):
        lab = label.detach().reshape(n, -1).long()
        valid = lab != self.ignore if self.ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        values = torch.unique(lab[valid & ((lab < 0) | (lab >= c))]).tolist()
        return self.error(f"label values {values[:8]} are outside 0..{c - 1} and not the ignore_label")


LOG_THRESHOLD = 1e-20   # Caffe's kLOG_THRESHOLD


def normalizer(mode: int, outer: int, inner: int, valid) -> float | torch.Tensor:
    """Caffe's LossLayer::GetNormalizer: FULL outer*inner, VALID the valid count, BATCH_SIZE
    outer, NONE 1; never below 1."""
    if mode == FULL:
        return float(max(outer * inner, 1))
    if mode == VALID:
        return torch.clamp(valid, min=1.0) if torch.is_tensor(valid) else float(max(valid, 1))
    if mode == BATCH_SIZE:
        return float(max(outer, 1))
    if mode == NONE:
        return 1.0
    raise ValueError(f"unknown normalization mode {mode}")


class _Loss(LossLayer):

    def check_first_dims(self, bottom_shapes):
        a, b = bottom_shapes[0], bottom_shapes[1]
        if a and b and None not in (a[0], b[0]) and a[0] != b[0]:
            raise self.error(f"the data and label should have the same first dimension: {a} vs {b}")


def _num(shape):
    return shape[0] if shape else 1


@register("EuclideanLoss")
class EuclideanLoss(_Loss):
    """sum((a - b)^2) / (2 N); gradients flow to both bottoms."""

    def setup(self, bottom_shapes):
        self.check_first_dims(bottom_shapes)
        a, b = count(bottom_shapes[0], 1), count(bottom_shapes[1], 1)
        if None not in (a, b) and a != b:
            raise self.error(f"inputs must have the same dimension: {bottom_shapes[0]} vs {bottom_shapes[1]}")
        return [()]

    def allow_force_backward(self, bottom: int) -> bool:
        """Both bottoms, as EuclideanLossLayer overrides it."""
        return True

    def forward(self, a, b):
        return ((a - b).pow(2).sum() / _num(a.shape) / 2,)


def _loss_mode(lp, default):
    if lp.HasField("normalization"):
        return int(lp.normalization)
    if lp.HasField("normalize"):
        return VALID if lp.normalize else BATCH_SIZE
    return default


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(_Loss):
    """-sum(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))) over targets not equal to
    ignore_label, computed stably, / the normaliser (loss_param.normalization; default
    BATCH_SIZE; ``normalize`` true means VALID). d/dx = sigmoid(x) - t."""

    no_gradient_to = {1: "the targets"}

    def setup(self, bottom_shapes):
        self.check_first_dims(bottom_shapes)
        a, b = count(bottom_shapes[0]), count(bottom_shapes[1])
        if None not in (a, b) and a != b:
            raise self.error(f"inputs must have the same count: {bottom_shapes[0]} vs {bottom_shapes[1]}")
        lp = self.param.loss_param
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.mode = _loss_mode(lp, BATCH_SIZE)
        return [()]

    def forward(self, x, target):
        t = target.detach().to(x.dtype)
        pos = (x >= 0).to(x.dtype)
        terms = -(x * (t - pos) - torch.log1p(torch.exp(x - 2 * x * pos)))
        if self.ignore is not None:
            keep = target.detach().to(torch.int64) != self.ignore   # Caffe compares int(target)
            terms = terms * keep
            valid = keep.sum().to(x.dtype)
        else:
            valid = x.numel()
        n = _num(x.shape)
        return (terms.sum() / normalizer(self.mode, n, x.numel() // max(n, 1), valid),)


class _ContrastiveFn(torch.autograd.Function):
    """Caffe's contrastive loss and its backward (dissimilar pairs: beta = -mdist / (d + 1e-4))."""

    @staticmethod
    def forward(ctx, a, b, similar, margin, legacy):
        diff = a - b
        dist_sq = diff.pow(2).sum(1)
        if legacy:
            mdist = margin - dist_sq
            dissimilar = torch.clamp(mdist, min=0)
        else:
            dist = dist_sq.sqrt()
            mdist = margin - dist
            dissimilar = torch.clamp(mdist, min=0).pow(2)
        loss = torch.where(similar, dist_sq, dissimilar).sum() / a.shape[0] / 2
        ctx.save_for_backward(diff, dist_sq, similar, mdist)
        ctx.legacy = legacy
        return loss

    @staticmethod
    def backward(ctx, g):
        diff, dist_sq, similar, mdist = ctx.saved_tensors
        alpha = g / diff.shape[0]
        if ctx.legacy:
            beta = -torch.ones_like(dist_sq)
        else:
            beta = -mdist / (dist_sq.sqrt() + 1e-4)
        beta = torch.where(mdist > 0, beta, torch.zeros_like(beta))
        coeff = torch.where(similar, torch.ones_like(beta), beta) * alpha
        da = diff * coeff.unsqueeze(1)
        return da, -da, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(_Loss):
    """Pairs (a_i, b_i) of N x C x 1 x 1 features with similarity y_i (N x 1 x 1 x 1):
    1/(2N) sum[y d^2 + (1 - y) max(margin - d, 0)^2], d = ||a - b|| (legacy_version:
    max(margin - d^2, 0)); margin default 1. Caffe's gradient for dissimilar pairs divides by
    d + 1e-4."""

    exact_num_bottom_blobs = 3

    def setup(self, bottom_shapes):
        a, b, y = bottom_shapes
        for s in (a, b):
            if len(s) < 2 or any(d not in (1, None) for d in s[2:]):
                raise self.error(f"features must be N x C x 1 x 1, got {s}")
        if None not in (a[1], b[1]) and a[1] != b[1]:
            raise self.error(f"both feature bottoms need the same channels: {a} vs {b}")
        if any(d not in (1, None) for d in y[1:]):
            raise self.error(f"the similarity bottom must be N x 1 x 1 x 1, got {y}")
        p = self.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)
        return [()]

    def allow_force_backward(self, bottom: int) -> bool:
        """Both feature bottoms, never the similarity labels (bottom 2)."""
        return bottom != 2

    def forward(self, a, b, y):
        n = a.shape[0]
        similar = y.detach().reshape(n).to(torch.int64) != 0   # Caffe: static_cast<int>(y)
        return (_ContrastiveFn.apply(a.reshape(n, -1), b.reshape(n, -1), similar, self.margin, self.legacy),)


L1, L2 = 1, 2   # HingeLossParameter.Norm


@register("HingeLoss")
class HingeLoss(_Loss):
    """One-vs-all hinge loss of N x K scores against labels: d = max(0, 1 + s * x) with
    s = -1 for the true class, +1 otherwise; L1 (default): sum d / N, L2: sum d^2 / N."""

    no_gradient_to = {1: "the labels"}

    def setup(self, bottom_shapes):
        self.check_first_dims(bottom_shapes)
        self.norm = int(self.param.hinge_loss_param.norm)
        return [()]

    def forward(self, x, label):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        lab = label.detach().reshape(-1)[:n].long()    # Caffe reads label[i], the i-th value
        if lab.numel() < n:
            raise self.error(f"needs one label per item ({n}), got {lab.numel()}")
        k = flat.shape[1]
        checks.check((lab.min() < 0) | (lab.max() >= k), lambda: self.error(f"labels must lie in 0..{k - 1}"))
        sign = torch.ones_like(flat)
        sign.scatter_(1, lab.clamp(0, k - 1).unsqueeze(1), -1.0)
        margin = torch.relu(1 + flat * sign)
        total = margin.sum() if self.norm == L1 else margin.pow(2).sum()
        return (total / n,)


def _read_blobproto(layer, path) -> np.ndarray:
    """The array of a binary BlobProto file (infogain_loss_param.source)."""
    from ..proto import caffe_pb2
    blob = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
    except OSError as e:
        raise layer.error(f"cannot read infogain matrix {path}: {e.strerror}") from None
    except Exception:
        raise layer.error(f"{path} is not a binary BlobProto") from None
    return np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float64)


@register("InfogainLoss")
class InfogainLoss(_Loss):
    """-sum_l H[label, l] log(max(softmax(x)_l, 1e-20)) over positions whose label is not
    ignore_label, / the normaliser (loss_param.normalization, default VALID). Softmax along
    infogain_loss_param.axis (default 1). H (K x K) is the third bottom or the BlobProto
    file infogain_loss_param.source. Gradient (Caffe's): p_k sum_l H[label, l] - H[label, k].
    Optional second top: the softmax probabilities."""

    exact_num_bottom_blobs, min_bottom_blobs, max_bottom_blobs = -1, 2, 3
    exact_num_top_blobs, min_top_blobs, max_top_blobs = -1, 1, 2

    no_gradient_to = {1: "the labels", 2: "the infogain matrix"}

    def setup(self, bottom_shapes):
        scores, label = bottom_shapes[:2]
        lp = self.param.loss_param
        if lp.HasField("normalize"):
            raise self.error('normalize is deprecated. use "normalization"')
        self.mode = int(lp.normalization)
        self.ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        self.axis = canonical_axis(self.param.infogain_loss_param.axis, len(scores), self)
        outer, inner, k = count(scores, 0, self.axis), count(scores, self.axis + 1), scores[self.axis]
        if None not in (outer, inner) and count(label) is not None and outer * inner != count(label):
            raise self.error(f"number of labels ({count(label)}) must match number of predictions ({outer * inner})")
        if len(bottom_shapes) < 3:
            source = self.param.infogain_loss_param.source
            if not source:
                raise self.error("infogain matrix source must be specified (or give H as the third bottom)")
            h = _read_blobproto(self, source)
            if k is not None and h.size != k * k:
                raise self.error(f"the infogain matrix in {source} has {h.size} values; {k}x{k} expected")
            self.register_buffer("infogain", torch.from_numpy(h.astype(np.float32)).reshape(-1), persistent=False)
        elif k is not None and count(bottom_shapes[2]) not in (None, k * k):
            raise self.error(f"H has shape {bottom_shapes[2]}; {k}x{k} values expected")
        tops = [()]
        if self.top_count > 1:
            tops.append(scores)
        return tops

    def forward(self, scores, label, h=None):
        k = scores.shape[self.axis]
        h = (self.infogain if h is None else h.detach()).reshape(k, k).to(scores.dtype)
        outer = count(scores.shape, 0, self.axis)
        s = scores.reshape(outer, k, -1)
        lab = label.detach().reshape(outer, -1).long()
        keep = lab != self.ignore if self.ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        bad = keep & ((lab < 0) | (lab >= k))
        checks.check(bad.any(), lambda: self.error(f"label values {torch.unique(lab[bad]).tolist()[:8]} are "
                                                   f"outside 0..{k - 1}"))
        keep = keep & ~bad
        logp = torch.log_softmax(s, dim=1)
        # log(max(p, 1e-20)) in value, the gradient of log p (Caffe's backward ignores the clamp)
        logp = logp + (torch.clamp(logp, min=math.log(LOG_THRESHOLD)) - logp).detach()
        rows = h[torch.where(keep, lab, torch.zeros_like(lab))]          # outer x inner x K
        terms = -(rows.permute(0, 2, 1) * logp).sum(1) * keep
        loss = terms.sum() / normalizer(self.mode, outer, s.shape[2], keep.sum().to(scores.dtype))
        if self.top_count > 1:
            return loss, torch.softmax(scores, dim=self.axis)
        return (loss,)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(_Loss):
    """-sum_i log(max(p[i, label_i], 1e-20)) / N for N x K probabilities; Caffe's gradient
    -1 / (N max(p, 1e-20)) at the label (also where the clamp is active)."""

    no_gradient_to = {1: "the labels"}

    def setup(self, bottom_shapes):
        self.check_first_dims(bottom_shapes)
        if count(bottom_shapes[1], 1) not in (1, None):
            raise self.error(f"the label must hold one value per item, got shape {bottom_shapes[1]}")
        return [()]

    def forward(self, p, label):
        n = p.shape[0]
        flat = p.reshape(n, -1)
        lab = label.detach().reshape(n).long()
        k = flat.shape[1]
        checks.check((lab.min() < 0) | (lab.max() >= k), lambda: self.error(f"labels must lie in 0..{k - 1}"))
        prob = flat.gather(1, lab.clamp(0, k - 1).unsqueeze(1))
        prob = prob + (torch.clamp(prob, min=LOG_THRESHOLD) - prob).detach()
        return (-torch.log(prob).sum() / n,)
