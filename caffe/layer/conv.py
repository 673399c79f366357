"""Convolution, with the DeepLab fork's 'hole' (atrous) spelling of dilation."""
from __future__ import annotations

import torch.nn.functional as F

from . import Layer, register, spatial


def conv_out(size, kernel, pad, stride, dilation):
    """Caffe's (and PyTorch's) output size: floor((in + 2p - (d(k-1)+1)) / s) + 1."""
    if size is None:
        return None
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


@register("Convolution")
class Convolution(Layer):
    """2-D convolution: pad, kernel, stride, dilation (or hole), group, bias_term, fillers."""

    num_bottoms = (1,)

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        has = p.HasField
        self.kernel = spatial(p.kernel_size, None, p.kernel_h if has("kernel_h") else None,
                              p.kernel_w if has("kernel_w") else None, None, "kernel", self)
        self.stride = spatial(p.stride, None, p.stride_h if has("stride_h") else None,
                              p.stride_w if has("stride_w") else None, 1, "stride", self)
        self.pad = spatial(p.pad, None, p.pad_h if has("pad_h") else None,
                           p.pad_w if has("pad_w") else None, 0, "pad", self)
        # The fork's hole/hole_h/hole_w is the input stride of the atrous algorithm = dilation.
        if has("hole") or has("hole_h") or has("hole_w"):
            if len(p.dilation):
                raise self.error("give dilation or hole, not both")
            hole = p.hole if has("hole") else None
            self.dilation = spatial([], hole, p.hole_h if has("hole_h") else None,
                                    p.hole_w if has("hole_w") else None, 1, "hole", self)
        else:
            self.dilation = spatial(p.dilation, None, None, None, 1, "dilation", self)
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.dilation) < 1:
            raise self.error("kernel, stride and dilation must be positive")
        if p.axis != 1 or p.force_nd_im2col:
            raise self.error("only 2-D convolution over axis 1 is supported")
        n, c, h, w = bottom_shapes[0]
        self.group = int(p.group)
        out = int(p.num_output)
        if out < 1:
            raise self.error("num_output must be positive")
        if c % self.group or out % self.group:
            raise self.error(f"channels ({c}) and num_output ({out}) must be divisible by group ({self.group})")
        self.add_blob((out, c // self.group) + self.kernel, p.weight_filler)
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.add_blob((out,), p.bias_filler)
        oh = conv_out(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        ow = conv_out(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            raise self.error(f"input {h}x{w} is smaller than the dilated kernel; output would be {oh}x{ow}")
        return [(n, out, oh, ow)]

    def forward(self, x):
        bias = self.blobs[1] if self.bias_term else None
        return (F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group),)
