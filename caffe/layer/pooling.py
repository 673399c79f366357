"""Pooling (MAX, AVE, global) with Caffe's output size and border rules."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import Layer, register, spatial

MAX, AVE = 0, 1


def pool_out(size, kernel, pad, stride):
    """Caffe's pooled size: ceil((in + 2p - k) / s) + 1, then drop a last window that
    would start inside the padding (``(out - 1) * s >= in + p``)."""
    if size is None:
        return None
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("Pooling")
class Pooling(Layer):
    """MAX or AVE pooling. AVE divides by the window clipped to image + padding (Caffe)."""

    num_bottoms = (1,)
    num_tops = (1,)

    def setup(self, bottom_shapes):
        p = self.param.pooling_param
        has = p.HasField
        n, c, h, w = bottom_shapes[0]
        self.method = int(p.pool)
        if self.method not in (MAX, AVE):
            raise self.error("only MAX and AVE pooling are supported")
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
            return [(n, c, 1 if h is not None else None, 1 if w is not None else None)]
        self.kernel = spatial([], p.kernel_size if has("kernel_size") else None,
                              p.kernel_h if has("kernel_h") else None, p.kernel_w if has("kernel_w") else None,
                              None, "kernel", self)
        if min(self.kernel) < 1 or min(self.stride) < 1:
            raise self.error("kernel and stride must be positive")
        if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
            raise self.error("pad must be smaller than the kernel")
        return [(n, c, pool_out(h, self.kernel[0], self.pad[0], self.stride[0]),
                 pool_out(w, self.kernel[1], self.pad[1], self.stride[1]))]

    def forward(self, x):
        if self.global_pooling:
            if self.method == MAX:
                return (torch.amax(x, dim=(2, 3), keepdim=True),)
            return (torch.mean(x, dim=(2, 3), keepdim=True),)
        k, s, p = self.kernel, self.stride, self.pad
        if p[0] <= k[0] // 2 and p[1] <= k[1] // 2:
            # PyTorch's ceil_mode follows the same two rules as Caffe (ceil, then drop a window
            # starting in the padding), and count_include_pad=True divides by the window
            # clipped to image + padding, as Caffe's AVE does.
            if self.method == MAX:
                return (F.max_pool2d(x, k, s, p, ceil_mode=True),)
            return (F.avg_pool2d(x, k, s, p, ceil_mode=True, count_include_pad=True),)
        return (self._padded_pool(x),)

    def _padded_pool(self, x):
        """Explicit-padding path for pads larger than half the kernel (PyTorch refuses those)."""
        k, s, p = self.kernel, self.stride, self.pad
        h, w = x.shape[2:]
        oh, ow = pool_out(h, k[0], p[0], s[0]), pool_out(w, k[1], p[1], s[1])
        extra_h = (oh - 1) * s[0] + k[0] - h - p[0]   # rows needed past the bottom edge
        extra_w = (ow - 1) * s[1] + k[1] - w - p[1]
        pads = (p[1], extra_w, p[0], extra_h)
        if self.method == MAX:
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)
        total = F.avg_pool2d(F.pad(x, pads), k, s, divisor_override=1)
        # Caffe's divisor counts window cells inside [-pad, size + pad), not beyond.
        ones = torch.ones((1, 1, h + 2 * p[0], w + 2 * p[1]), dtype=x.dtype, device=x.device)
        ones = F.pad(ones, (0, extra_w - p[1], 0, extra_h - p[0]))
        count = F.avg_pool2d(ones, k, s, divisor_override=1)
        return total / count
