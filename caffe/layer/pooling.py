"""Pooling (MAX, AVE, STOCHASTIC, global) with Caffe's output size and border rules."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Layer, register, spatial

MAX, AVE, STOCHASTIC = 0, 1, 2
CEIL, FLOOR = 0, 1   # PoolingParameter.RoundMode


def pool_out(size, kernel, pad, stride, round_mode=CEIL, clip=None):
    """Caffe's pooled size: ceil (or floor, ``round_mode: FLOOR``) of (in + 2p - k) / s, plus 1;
    then, if the layer has any padding (``clip``; default: this axis' pad), drop a last window
    that would start in the padding (``(out - 1) * s >= in + p``), so that the last pooling
    starts inside the image. Without padding nothing is dropped, even a window that starts
    past the image (kernel < stride): Caffe outputs -FLT_MAX (MAX) or 0/0 (AVE) there."""
    if size is None:
        return None
    rounding = math.floor if round_mode == FLOOR else math.ceil
    out = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if (pad if clip is None else clip) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_out(size, kernel, pad, stride, ceil: bool):
    """The size F.max_pool2d / F.avg_pool2d give (their ceil_mode drops a window starting in
    the right padding or past the image whatever the padding)."""
    out = (size + 2 * pad - kernel + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _mask(idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Caffe's max mask (a Dtype blob of indices) in at least float32: under autocast the
    values are bfloat16 / float16, which hold integers exactly only up to 256 / 2048, so a
    mask in their dtype would send SegNet's Upsample to the wrong places."""
    return idx.to(torch.promote_types(dtype, torch.float32))


@register("Pooling")
class Pooling(Layer):
    """MAX, AVE or STOCHASTIC pooling. AVE divides by the window clipped to image + padding
    (Caffe). MAX pooling may have a second top, Caffe's mask: the index h * W + w of each
    maximum in its input plane (-1 for a window holding no input). STOCHASTIC (no padding)
    follows BVLC's GPU kernels (its CPU code is not implemented): see ``_stochastic``."""

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = -1
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.pooling_param
        has = p.HasField
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"takes a 4-axis (N, C, H, W) bottom, got shape {bottom_shapes[0]}")
        n, c, h, w = bottom_shapes[0]
        self.method = int(p.pool)
        if self.method not in (MAX, AVE, STOCHASTIC):
            raise self.error(f"unknown pooling method {self.method}")
        if self.top_count > 1 and self.method != MAX:
            raise self.error("takes at most 1 top blob(s) unless pool is MAX (the second top is the max mask)")
        self.round_mode = int(p.round_mode)
        self.global_pooling = bool(p.global_pooling)
        self.pad = spatial([], p.pad if has("pad") else None, p.pad_h if has("pad_h") else None,
                           p.pad_w if has("pad_w") else None, 0, "pad", self)
        self.stride = spatial([], p.stride if has("stride") else None, p.stride_h if has("stride_h") else None,
                              p.stride_w if has("stride_w") else None, 1, "stride", self)
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("with global_pooling: true the filter size cannot be specified")
            if self.pad != (0, 0) or self.stride != (1, 1):
                raise self.error("with global_pooling: true only pad = 0 and stride = 1 are supported")
            self.kernel = (h, w)
            out = (n, c, 1 if h is not None else None, 1 if w is not None else None)
            return [out] * self.top_count
        self.kernel = spatial([], p.kernel_size if has("kernel_size") else None,
                              p.kernel_h if has("kernel_h") else None, p.kernel_w if has("kernel_w") else None,
                              None, "kernel", self)
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise self.error("kernel and stride must be positive")
        if self.method == STOCHASTIC and self.pad != (0, 0):
            raise self.error("padding is implemented only for AVE and MAX pooling, not STOCHASTIC")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise self.error("pad must be smaller than the kernel")
        out = (n, c) + self.out_size(h, w)
        if any(d is not None and d < 1 for d in out[2:]):
            raise self.error(f"input {h}x{w} is smaller than the {self.kernel[0]}x{self.kernel[1]} kernel")
        return [out] * self.top_count

    def out_size(self, h, w) -> tuple:
        """Caffe's pooled (height, width) for an input of h x w."""
        k, s, p = self.kernel, self.stride, self.pad
        clip = bool(p[0] or p[1])  # Caffe clips both axes when either has padding
        return (pool_out(h, k[0], p[0], s[0], self.round_mode, clip),
                pool_out(w, k[1], p[1], s[1], self.round_mode, clip))

    def forward(self, x):
        h, w = x.shape[2:]
        if self.global_pooling:
            if self.method == AVE:
                return (torch.mean(x, dim=(2, 3), keepdim=True),)
            k, s, p = (h, w), (1, 1), (0, 0)
        else:
            k, s, p = self.kernel, self.stride, self.pad
        oh, ow = (1, 1) if self.global_pooling else self.out_size(h, w)
        if self.method == STOCHASTIC:
            return (self._stochastic(x, k, s, oh, ow),)
        ceil = self.round_mode == CEIL
        native = (p[0] <= k[0] // 2 and p[1] <= k[1] // 2
                  and (_torch_out(h, k[0], p[0], s[0], ceil), _torch_out(w, k[1], p[1], s[1], ceil)) == (oh, ow))
        if native:
            # Same windows as Caffe here; count_include_pad=True divides by the window clipped
            # to image + padding, as Caffe's AVE does.
            if self.method == AVE:
                return (F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=True),)
            if self.top_count == 1:
                return (F.max_pool2d(x, k, s, p, ceil_mode=ceil),)
            y, idx = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
            return y, _mask(idx, x.dtype)
        return self._padded_pool(x, k, s, p, oh, ow)

    def _padded_pool(self, x, k, s, p, oh, ow):
        """Explicit padding, for windows PyTorch does not make: pads over half the kernel,
        and a last window past the image without padding (kernel < stride)."""
        h, w = x.shape[2:]
        extra_h = (oh - 1) * s[0] + k[0] - h - p[0]   # rows needed past the bottom edge
        extra_w = (ow - 1) * s[1] + k[1] - w - p[1]
        pads = (p[1], extra_w, p[0], extra_h)
        if self.method == MAX:
            # Caffe starts each window at -FLT_MAX: an empty window keeps it.
            lowest = torch.finfo(x.dtype).min
            y, idx = F.max_pool2d(F.pad(x, pads, value=lowest), k, s, return_indices=True)
            if self.top_count == 1:
                return (y,)
            wp = w + p[1] + extra_w
            row, col = idx // wp - p[0], idx % wp - p[1]
            inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
            mask = torch.where(inside, row * w + col, torch.full_like(idx, -1))
            return y, _mask(mask, x.dtype)
        total = F.avg_pool2d(F.pad(x, pads), k, s, divisor_override=1)
        # Caffe's divisor counts window cells inside [-pad, size + pad), not beyond (0 for a
        # window past the image: 0/0, as in Caffe).
        ones = torch.ones((1, 1, h + 2 * p[0], w + 2 * p[1]), dtype=x.dtype, device=x.device)
        ones = F.pad(ones, (0, extra_w - p[1], 0, extra_h - p[0]))
        count = F.avg_pool2d(ones, k, s, divisor_override=1)
        return (total / count,)

    def _stochastic(self, x, k, s, oh, ow):
        """Caffe's StoPoolForwardTrain / StoPoolForwardTest over windows clipped to the image.

        TRAIN: per window draw u in (0, 1] (curand's range), thres = u * sum of the window,
        and take the first element in row-major order whose running sum reaches thres, so an
        element is picked with probability proportional to its (non-negative) value; the
        gradient flows to the picked element only (StoPoolBackward). TEST: sum(a^2) / sum(a),
        0 where the sum is not positive; no gradient (Caffe's backward reads the TRAIN draw).
        A window holding no input (past the image) gives 0."""
        n, c, h, w = x.shape
        extra_h, extra_w = max((oh - 1) * s[0] + k[0] - h, 0), max((ow - 1) * s[1] + k[1] - w, 0)
        cols = F.unfold(F.pad(x.reshape(n * c, 1, h, w), (0, extra_w, 0, extra_h)), k, stride=s)
        if self.training:
            ones = F.pad(torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device), (0, extra_w, 0, extra_h))
            valid = F.unfold(ones, k, stride=s) > 0
            running = cols.detach().cumsum(1)
            u = 1 - torch.rand(running[:, -1:].shape, dtype=x.dtype, device=x.device)
            hit = (running >= u * running[:, -1:]) & valid
            first = hit.to(torch.uint8).argmax(1, keepdim=True)
            top = cols.gather(1, first) * hit.any(1, keepdim=True)
        else:
            cols = cols.detach()
            total, squares = cols.sum(1, keepdim=True), (cols * cols).sum(1, keepdim=True)
            top = torch.where(total > 0, squares / torch.where(total > 0, total, torch.ones_like(total)),
                              torch.zeros_like(total))
        return top.reshape(n, c, oh, ow)
