"""The DeepLab fork's layers for weakly/semi-supervised training (Papandreou et al. 2015):
UniqueLabel, CensorLabel, Histogram, IgnoreOverlay, OneHot, BiasChannel, AdaptiveBiasChannel
and DominantChannel, as its src/caffe/layers/*.cpp compute them.

Label lists are N x L x 1 x 1 blobs padded with -1 (UniqueLabel's output). None of these layers
has a gradient except BiasChannel's score input (a copy of the top's diff); the others leave
their bottoms' diffs untouched (zero here), or abort when asked for one, as the fork does.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Layer, register


def _cpu(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


def _label_list(layer: Layer, labels: np.ndarray, channels: int, n: int, skip=(-1,)) -> list[int]:
    """Image ``n``'s labels from an N x L x 1 x 1 list, as ints (static_cast), skipping ``skip``;
    a label outside 0..channels-1 is the fork's LOG(FATAL) "Unexpected label"."""
    out = []
    for v in labels[n].reshape(-1):
        label = int(v)
        if label in skip:
            continue
        if not 0 <= label < channels:
            raise layer.error(f"unexpected label {label} (the scores have {channels} channels)")
        out.append(label)
    return out


@register("UniqueLabel")
class UniqueLabel(Layer):
    """Per image, the sorted distinct values of a 1-channel label map (ignore_label values
    left out, force_label values added), written to N x max_labels x 1 x 1 and padded
    with -1. More distinct values than max_labels is an error."""

    exact_num_bottom_blobs = 1
    no_gradient_to = {0: "the label input"}

    def setup(self, bottom_shapes):
        p = self.param.unique_label_param
        self.ignore = {np.float32(v) for v in p.ignore_label}
        self.force = {np.float32(v) for v in p.force_label}
        self.max_labels = int(p.max_labels)
        if self.max_labels <= len(self.force):
            raise self.error(f"max_labels ({self.max_labels}) must exceed the number of force_label values "
                             f"({len(self.force)}): at least one label more than the forced ones needs to fit")
        n, c = bottom_shapes[0][:2]
        if c is not None and c != 1:
            raise self.error(f"input must have one channel, got {c}")
        return [(n, self.max_labels, 1, 1)]

    @torch.no_grad()
    def forward(self, label):
        x = _cpu(label)
        out = np.full((x.shape[0], self.max_labels, 1, 1), -1, np.float32)
        for n in range(x.shape[0]):
            vals = {v for v in np.unique(x[n]) if v not in self.ignore} | self.force
            if len(vals) > self.max_labels:
                raise self.error(f"image {n} has {len(vals)} distinct labels, more than max_labels "
                                 f"{self.max_labels}: too many unique elements, increase max_labels")
            out[n, :len(vals), 0, 0] = sorted(vals)
        return (torch.from_numpy(out).to(label.device, label.dtype),)


@register("CensorLabel")
class CensorLabel(Layer):
    """Keeps the pixels of a 1-channel label map whose value is in the image's label list
    (bottom 1, N x L x 1 x 1, -1 entries skipped); every other pixel becomes ignore_label."""

    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.censor_label_param
        self.ignore = int(p.ignore_label)
        (n, c, h, w), (n1, _, h1, w1) = bottom_shapes[0], bottom_shapes[1]
        if c is not None and c != 1:
            raise self.error(f"bottom 0 must have one channel, got {c}")
        if None not in (n, n1) and n != n1:
            raise self.error(f"bottoms differ in num: {n} vs {n1}")
        if (h1, w1) != (1, 1) and None not in (h1, w1):
            raise self.error(f"bottom 1 must be N x L x 1 x 1, got height {h1} and width {w1}")
        return [(n, c, h, w)]

    @torch.no_grad()
    def forward(self, label, allowed):
        keep = torch.zeros_like(label, dtype=torch.bool)
        for n in range(label.shape[0]):
            vals = allowed[n].reshape(-1)
            vals = vals[vals != -1]
            keep[n] = torch.isin(label[n], vals)
        return (torch.where(keep, label, torch.full_like(label, float(self.ignore))),)


@register("Histogram")
class Histogram(Layer):
    """Counts of each label 0..num_labels-1 in a 1-channel integer label map (ignore_label
    values skipped; other values outside the range are an error). Top N x num_labels x 1 x 1.
    As the fork computes it, every image's counts go to the first row (its Forward writes
    through the blob's start, not image n's), and the other rows stay 0."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.histogram_param
        self.num_labels = int(p.num_labels)
        if self.num_labels <= 0:
            raise self.error(f"num_labels needs to be positive, got {self.num_labels}")
        self.ignore = {int(v) for v in p.ignore_label}
        n, c = bottom_shapes[0][:2]
        if c is not None and c != 1:
            raise self.error(f"input must have a single channel, got {c}")
        return [(n, self.num_labels, 1, 1)]

    @torch.no_grad()
    def forward(self, label):
        x = _cpu(label).reshape(-1)
        ints = x.astype(np.int64)   # static_cast<int> truncates toward zero
        bad = ints != x
        if bad.any():
            raise self.error(f"input assumed integer-valued, got {x[bad][0]}")
        keep = ~np.isin(ints, list(self.ignore)) if self.ignore else np.ones_like(ints, bool)
        ints = ints[keep]
        out_of_range = (ints < 0) | (ints >= self.num_labels)
        if out_of_range.any():
            raise self.error(f"unexpected label {ints[out_of_range][0]} (num_labels {self.num_labels})")
        out = np.zeros((label.shape[0], self.num_labels, 1, 1), np.float32)
        out[0, :, 0, 0] = np.bincount(ints, minlength=self.num_labels)
        return (torch.from_numpy(out).to(label.device, label.dtype),)


@register("IgnoreOverlay")
class IgnoreOverlay(Layer):
    """Bottom 1 with bottom 0's ignore_label pixels laid over it: where bottom 0 (truncated to
    an integer) equals ignore_label (0 when unset, as in the fork), the top takes that value."""

    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        self.ignore = int(self.param.ignore_overlay_param.ignore_label)
        a, b = bottom_shapes
        for axis, (x, y) in enumerate(zip(a, b)):
            if None not in (x, y) and x != y:
                raise self.error(f"incompatible inputs: shapes {tuple(a)} and {tuple(b)}")
        return [tuple(a)]

    @torch.no_grad()
    def forward(self, mask, label):
        hit = torch.trunc(mask) == self.ignore
        return (torch.where(hit, torch.full_like(label, float(self.ignore)), label),)


@register("OneHot")
class OneHot(Layer):
    """One-hot planes from label channels: each of the input's C channels holds a label per
    pixel (-1..num_labels-1, truncated to an integer), and the top (N x num_labels x H x W)
    is 1 at every (label, pixel) named by some channel, 0 elsewhere. A -1 label, as in the
    fork's Forward (which writes one channel-plane before the pixel's own), sets the
    previous image's last channel at that pixel; for the first image it sets nothing."""

    exact_num_bottom_blobs = 1
    no_gradient_to = {"*": "OneHot has no backward"}

    def setup(self, bottom_shapes):
        self.num_labels = int(self.param.onehot_param.num_labels)
        if self.num_labels < 1:
            raise self.error(f"num_labels must be at least 1, got {self.num_labels}")
        n, c, h, w = bottom_shapes[0]
        if c is not None and self.num_labels > c:
            raise self.error(f"num_labels ({self.num_labels}) must be less than or equal to the number of "
                             f"channels ({c})")
        return [(n, self.num_labels, h, w)]

    @torch.no_grad()
    def forward(self, x):
        labels = _cpu(x).astype(np.int64)
        bad = (labels >= self.num_labels) | (labels < -1)
        if bad.any():
            raise self.error(f"label {labels[bad][0]} outside -1..{self.num_labels - 1}")
        n, c, h, w = labels.shape
        out = np.zeros((n, self.num_labels, h, w), np.float32)
        for k in range(n):
            for ch in range(c):
                lab = labels[k, ch]
                ys, xs = np.nonzero(lab >= 0)
                out[k, lab[ys, xs], ys, xs] = 1
                if k > 0:
                    ys, xs = np.nonzero(lab == -1)
                    out[k - 1, self.num_labels - 1, ys, xs] = 1
        return (torch.from_numpy(out).to(x.device, x.dtype),)


@register("BiasChannel")
class BiasChannel(Layer):
    """Adds fixed biases to the score channels of the labels present. label_type IMAGE: the
    labels are a list per image (N x L x 1 x 1); each listed label (-1 and ignore_label
    skipped; a repeated label adds again) gets bg_bias (label 0) or fg_bias on its whole
    channel. PIXEL: a label per pixel (N x 1 x H x W); label 0 adds bg_bias to channel 0,
    a label l > 0 adds bg_bias to channel 0 and fg_bias to channel l at that pixel. The
    scores' gradient is the top's; the labels get none."""

    exact_num_bottom_blobs = 2
    no_gradient_to = {1: "the label input"}

    def setup(self, bottom_shapes):
        from ..proto import caffe_pb2
        p = self.param.bias_channel_param
        self.bg, self.fg = float(p.bg_bias), float(p.fg_bias)
        if self.bg < 0 or self.fg < 0:
            raise self.error(f"bg_bias and fg_bias need to be non-negative, got {self.bg} and {self.fg}")
        self.ignore = {-1} | {int(v) for v in p.ignore_label}
        self.pixel = p.label_type == caffe_pb2.BiasChannelParameter.PIXEL
        (n, c, h, w), (n1, c1, h1, w1) = bottom_shapes
        if None not in (n, n1) and n != n1:
            raise self.error(f"inputs incompatible in num: {n} vs {n1}")
        want = (1, h, w) if self.pixel else (None, 1, 1)
        for name, got, exp in zip(("channels", "height", "width"), (c1, h1, w1), want):
            if None not in (got, exp) and got != exp:
                raise self.error(f"label {name} {got}, expected {exp} for label_type "
                                 f"{'PIXEL' if self.pixel else 'IMAGE'}")
        if c1 is not None and c1 < 1:
            raise self.error("label blob needs to be non-empty")
        return [(n, c, h, w)]

    def forward(self, scores, labels):
        with torch.no_grad():
            bias = torch.zeros_like(scores)
            lab = _cpu(labels)
            c = scores.shape[1]
            for n in range(scores.shape[0]):
                if not self.pixel:
                    for label in _label_list(self, lab, c, n, skip=self.ignore):
                        bias[n, label] += self.bg if label == 0 else self.fg
                    continue
                pix = lab[n, 0].astype(np.int64)
                use = ~np.isin(pix, list(self.ignore))
                bad = use & ((pix < 0) | (pix >= c))
                if bad.any():
                    raise self.error(f"unexpected label {pix[bad][0]} (the scores have {c} channels)")
                b = np.zeros(scores.shape[1:], np.float32)
                b[0][use] += np.float32(self.bg)
                ys, xs = np.nonzero(use & (pix > 0))
                b[pix[ys, xs], ys, xs] += np.float32(self.fg)
                bias[n] = torch.from_numpy(b).to(bias.device, bias.dtype)
        return (scores + bias,)


@register("AdaptiveBiasChannel")
class AdaptiveBiasChannel(Layer):
    """EM-Adapt's adaptive biases (the fork's AdaptiveBiasChannelLayer). Per image, with the
    labels present (bottom 1 list, -1 skipped, sorted, background 0 first): optionally clip
    absent labels' scores to below the present ones (suppress_others, margin_others); then
    ``num_iter`` times, over the present labels in random order (background always first),
    add to label l's channel the bg/fg_portion quantile (the element at index
    int(portion * H * W) of the ascending differences) of (max present score - score of l),
    updating the max as it goes; finally shift all channels so the mean of the max present
    score is what it was. No gradient (the fork's Backward does nothing)."""

    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.adaptive_bias_channel_param
        self.num_iter = int(p.num_iter)
        if self.num_iter <= 0:
            raise self.error(f"num_iter must be positive, got {self.num_iter}")
        self.suppress = bool(p.suppress_others)
        self.margin = np.float32(p.margin_others)
        if self.margin < 0:
            raise self.error(f"margin_others must be non-negative, got {self.margin}")
        self.bg_portion, self.fg_portion = np.float32(p.bg_portion), np.float32(p.fg_portion)
        for name, v in (("bg_portion", self.bg_portion), ("fg_portion", self.fg_portion)):
            if not 0 <= v <= 1:
                raise self.error(f"{name} needs to be in [0, 1], got {v}")
        (n, c, h, w), (n1, c1, h1, w1) = bottom_shapes
        if c is not None and c <= 1:
            raise self.error(f"the scores need more than one channel, got {c}")
        if None not in (n, n1) and n != n1:
            raise self.error(f"inputs incompatible in num: {n} vs {n1}")
        if None not in (h1, w1) and (h1, w1) != (1, 1):
            raise self.error(f"the label list must be N x L x 1 x 1, got height {h1} and width {w1}")
        return [(n, c, h, w)]

    @torch.no_grad()
    def forward(self, scores, labels):
        top = _cpu(scores).copy()
        lab = _cpu(labels)
        n_img, c, h, w = top.shape
        dim = h * w
        for n in range(n_img):
            present = sorted(_label_list(self, lab, c, n))
            if not present:
                continue
            bg = 0 in present
            t = top[n].reshape(c, dim)
            if self.suppress:
                floor = t[sorted(set(present))].min(axis=0)
                for ch in range(c):
                    if ch not in present:
                        over = t[ch] > floor
                        t[ch][over] = floor[over] - self.margin
            best = t[present].max(axis=0)
            mean0 = float(np.sum(best, dtype=np.float64)) / dim
            for _ in range(self.num_iter):
                rest = present[int(bg):]
                order = present[:int(bg)] + [rest[i] for i in torch.randperm(len(rest)).tolist()]
                for label in order:
                    diff = best - t[label]
                    nth = int((self.bg_portion if label == 0 else self.fg_portion) * np.float32(dim))
                    # nth == H * W (portion 1) reads past the end in the fork; the largest here
                    shift = np.partition(diff, min(nth, dim - 1))[min(nth, dim - 1)]
                    t[label] += shift
                    best = np.maximum(best, t[label])
            mean1 = float(np.sum(best, dtype=np.float64)) / dim
            t += np.float32(mean0 - mean1)
        return (torch.from_numpy(top).to(scores.device, scores.dtype),)


@register("DominantChannel")
class DominantChannel(Layer):
    """The top_k channels that most often rank first, second, ... across an image's pixels:
    each pixel ranks its channels by score (descending); channel c's histogram counts how
    often it was 1st, ..., top_k-th; channels are ordered by their histograms compared
    lexicographically (descending), and the first top_k channel indices are the top
    (N x top_k x 1 x 1). Ties, which the fork's unstable sorts leave unspecified, go to the
    lower index here. No gradient."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        self.top_k = int(self.param.dominant_channel_param.top_k)
        if self.top_k < 1:
            raise self.error(f"top_k must not be less than 1, got {self.top_k}")
        n, c = bottom_shapes[0][:2]
        if c is not None and self.top_k >= c:
            raise self.error(f"top_k ({self.top_k}) must be less than the number of channels ({c})")
        return [(n, self.top_k, 1, 1)]

    @torch.no_grad()
    def forward(self, x):
        v = _cpu(x)
        n_img, c = v.shape[:2]
        out = np.zeros((n_img, self.top_k, 1, 1), np.float32)
        for n in range(n_img):
            pix = v[n].reshape(c, -1).T                              # positions x channels
            ranked = np.argsort(-pix, axis=1, kind="stable")[:, :self.top_k]
            histo = np.zeros((c, self.top_k), np.int64)
            for j in range(self.top_k):
                histo[:, j] = np.bincount(ranked[:, j], minlength=c)
            # lexicographic descending on the rows, ties by index: lexsort's last key is primary
            order = np.lexsort((np.arange(c),) + tuple(-histo[:, j] for j in reversed(range(self.top_k))))
            out[n, :, 0, 0] = order[:self.top_k]
        return (torch.from_numpy(out).to(x.device, x.dtype),)
