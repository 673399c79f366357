"""Accuracy (top_k, ignore_label, axis, per-class second top), ArgMax and the fork's
SegAccuracy. None has a gradient (Caffe's Backward for each is NOT_IMPLEMENTED / never called).
"""
from __future__ import annotations

import torch

from .base import Layer, register
from .loss import repeated_or_optional
from .shape_ops import canonical_axis, count


@register("Accuracy")
class Accuracy(Layer):
    """Fraction of labelled positions whose true class is among the top_k scores along
    ``axis`` (default 1). A position counts as correct when fewer than top_k scores are
    >= the true class's score besides its own (Caffe's tie rule). Labels equal to
    ignore_label are skipped; 0 when nothing is counted. Any other label outside 0..C-1 is
    counted as not correct (with one warning). Optional second top: the accuracy per class
    (0 for classes absent from the labels)."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 2
    exact_num_top_blobs, min_top_blobs, max_top_blobs = -1, 1, 2

    no_gradient_to = {"*": "Accuracy has no backward"}

    def setup(self, bottom_shapes):
        p = self.param.accuracy_param
        scores, label = bottom_shapes
        self.top_k = int(p.top_k)
        self.ignore = int(p.ignore_label) if p.HasField("ignore_label") else None
        self.axis = canonical_axis(p.axis, len(scores), self)
        outer, inner = count(scores, 0, self.axis), count(scores, self.axis + 1)
        nlab, classes = count(label), scores[self.axis]
        if None not in (outer, inner, nlab):
            if outer * inner != nlab:
                raise self.error(f"number of labels ({nlab}, shape {label}) must match number of predictions "
                                 f"({outer * inner}); e.g., if label axis == 1 and prediction shape is "
                                 f"(N, C, H, W), label count must be N*H*W")
        if classes is not None and self.top_k > classes:
            raise self.error(f"top_k ({self.top_k}) must be less than or equal to the number of classes ({classes})")
        tops = [()]
        if self.top_count > 1:
            tops.append((classes,))
        return tops

    @torch.no_grad()
    def forward(self, scores, label):
        scores = scores.detach()
        classes = scores.shape[self.axis]
        s = scores.reshape(count(scores.shape, 0, self.axis), classes, -1)   # outer x C x inner
        lab = label.detach().reshape(s.shape[0], s.shape[2]).long()
        keep = lab != self.ignore if self.ignore is not None else torch.ones_like(lab, dtype=torch.bool)
        # Caffe's release build only DCHECKs the label range and still counts the position; here
        # such a label (SegNet's void 11 without ignore_label) counts, never as correct.
        bad = keep & ((lab < 0) | (lab >= classes))
        if bool(bad.any()):
            from ..util.notices import warn_once
            warn_once(("accuracy-label", id(self)),
                      f"layer {self.name!r} (Accuracy): label values {torch.unique(lab[bad]).tolist()[:8]} are outside "
                      f"0..{classes - 1} and not ignore_label; counted as not correct")
        valid = keep & ~bad
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        true = s.gather(1, safe.unsqueeze(1))                                 # outer x 1 x inner
        better = (s >= true).sum(1) - 1                                       # others scoring >= true
        correct = (better < self.top_k) & valid
        n = int(keep.sum())
        acc = correct.sum().to(scores.dtype) / n if n else torch.zeros((), dtype=scores.dtype, device=scores.device)
        if self.top_count == 1:
            return (acc.reshape(()),)
        seen = torch.bincount(lab[valid], minlength=classes).to(scores.dtype)
        hit = torch.bincount(lab[correct], minlength=classes).to(scores.dtype)
        per_class = torch.where(seen > 0, hit / seen.clamp(min=1), torch.zeros_like(seen))
        return acc.reshape(()), per_class


@register("ArgMax")
class ArgMax(Layer):
    """Indices of the top_k largest values, along ``axis`` or (without one) over each
    item's flattened values; ``out_max_val`` adds (no axis) or gives (with axis) the values.
    Ties go to the larger index (Caffe's partial_sort with std::greater on (value, index))."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 1

    no_gradient_to = {"*": "ArgMax has no backward"}

    def setup(self, bottom_shapes):
        p = self.param.argmax_param
        shape = bottom_shapes[0]
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        if self.top_k < 1:
            raise self.error("top k must not be less than 1")
        self.axis = canonical_axis(p.axis, len(shape), self) if p.HasField("axis") else None
        if self.axis is not None:
            if shape[self.axis] is not None and self.top_k > shape[self.axis]:
                raise self.error("top_k must be less than or equal to the dimension of the axis")
            top = list(shape)
            top[self.axis] = self.top_k
            return [tuple(top)]
        per_item = count(shape, 1)
        if per_item is not None and self.top_k > per_item:
            raise self.error("top_k must be less than or equal to the dimension of the flattened bottom blob per instance")
        top = [1] * max(len(shape), 3)
        top[0] = shape[0]
        top[2] = self.top_k
        if self.out_max_val:
            top[1] = 2
        return [tuple(top)]

    def _top_k(self, x, dim):
        # Sorting the reversed axis stably (descending) puts equal values in decreasing
        # index order, as std::greater on (value, index) pairs does.
        size = x.shape[dim]
        values, rev = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
        index = size - 1 - rev
        return values.narrow(dim, 0, self.top_k), index.narrow(dim, 0, self.top_k)

    @torch.no_grad()
    def forward(self, x):
        x = x.detach()
        if self.axis is not None:
            values, index = self._top_k(x, self.axis)
            return ((values if self.out_max_val else index.to(x.dtype)),)
        n = x.shape[0]
        values, index = self._top_k(x.reshape(n, -1), 1)
        out = torch.cat([index.to(x.dtype), values], 1) if self.out_max_val else index.to(x.dtype)
        top = [1] * max(x.dim(), 3)
        top[0], top[2] = n, self.top_k
        if self.out_max_val:
            top[1] = 2
        return (out.reshape(top),)


@register("SegAccuracy")
class SegAccuracy(Layer):
    """The fork's segmentation accuracy (seg_accuracy_layer.cpp with util/confusion_matrix.cpp):
    top = [pixel accuracy, mean class accuracy, mean IoU] (shape 1x1x1x3) of a confusion matrix
    of labelled pixels (label not an ignore_label; the prediction is the highest score, the
    highest class among ties). Pixel accuracy is 0 on an empty matrix; class accuracy averages
    over classes present in the labels (0 if none); IoU averages over all C classes, a class
    whose intersection equals its union (absent from labels and predictions) counting 1. With
    ``reset: false`` the matrix accumulates over forwards (cleared only at setup). A label
    outside 0..C-1 that is not ignored stops the forward, as the fork's LOG(FATAL)."""

    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.seg_accuracy_param
        self.ignore = repeated_or_optional(p, "ignore_label")
        self.reset_each_forward = bool(p.reset)
        self._confusion = None
        return [(1, 1, 1, 3)]

    @torch.no_grad()
    def forward(self, scores, label):
        c = scores.shape[1]
        pred = (c - 1 - scores.flip(1).argmax(dim=1)).reshape(-1)   # std::greater on (score, class)
        lab = label.reshape(-1).long()
        keep = torch.ones_like(lab, dtype=torch.bool)
        for v in self.ignore:
            keep &= lab != v
        bad = keep & ((lab < 0) | (lab >= c))
        if bool(bad.any()):
            raise self.error(f"unexpected label {int(lab[bad][0])} (not an ignore_label, outside 0..{c - 1})")
        pred, lab = pred[keep], lab[keep]
        conf = torch.bincount(lab * c + pred, minlength=c * c).reshape(c, c)
        if not self.reset_each_forward and self._confusion is not None and self._confusion.shape == conf.shape:
            conf = conf + self._confusion.to(conf.device)
        self._confusion = conf
        conf = conf.double()
        tp = conf.diag()
        gt, pr = conf.sum(1), conf.sum(0)
        total = conf.sum()
        acc = tp.sum() / total if total > 0 else total
        recall = tp[gt > 0] / gt[gt > 0]
        union = gt + pr - tp
        iou = torch.where(tp == union, torch.ones_like(tp), tp / union.clamp(min=1))
        vals = [acc, recall.mean() if recall.numel() else acc * 0, iou.mean()]
        return (torch.stack(vals).to(scores.dtype).reshape(1, 1, 1, 3),)
