"""Deconvolution (transposed convolution) and Im2col over any number of spatial axes, with
Caffe's convolution_param geometry (caffe/layer/conv.py: kernel/stride/pad/dilation given once
or per spatial axis, _h/_w for 2-D, channel ``axis``)."""
from __future__ import annotations

import math

import torch.nn.functional as F

from .base import Layer, register
from .conv import batch_view, conv_channels, conv_geometry, conv_out, convolve, spatial_top, windows

TORCH_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def deconv_out(size, kernel, pad, stride, dilation):
    """Caffe's deconvolution output size: s (in - 1) + d (k - 1) + 1 - 2p."""
    if size is None:
        return None
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def deconvolve(x, weight, bias, stride, pad, dilation, groups):
    """Transposed convolution of x (num, C, *S) by weight (C, out/group, *K), Caffe's layout:
    torch's conv_transpose1d/2d/3d, or for other spatial counts the equivalent convolution of
    the stride-dilated input (zeros between samples) by the flipped, regrouped kernel with
    pad d (k - 1) - p (a negative pad crops)."""
    fn = TORCH_DECONV.get(len(stride))
    if fn is not None:
        return fn(x, weight, bias, stride, pad, 0, groups, dilation)
    num, c = x.shape[:2]
    kernel = tuple(weight.shape[2:])
    n = len(kernel)
    if any(s > 1 for s in stride):
        sizes = tuple((d - 1) * s + 1 for d, s in zip(x.shape[2:], stride))
        spread = x.new_zeros((num, c) + sizes)
        spread[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = x
        x = spread
    edge = [d * (k - 1) - q for k, q, d in zip(kernel, pad, dilation)]
    if any(edge):
        x = F.pad(x, [e for e in reversed(edge) for _ in (0, 1)])
    out = weight.shape[1] * groups
    w = weight.reshape((groups, c // groups, out // groups) + kernel).transpose(1, 2)
    w = w.reshape((out, c // groups) + kernel).flip(tuple(range(2, 2 + n)))
    return convolve(x, w, bias, (1,) * n, (0,) * n, dilation, groups)


@register("Deconvolution")
class Deconvolution(Layer):
    """Transposed N-d convolution (the gradient of Convolution w.r.t. its input): weights
    C_in x (num_output / group) x kernel..., as Caffe stores them; optional bias. Like
    Caffe's BaseConvolutionLayer it maps each of several same-shaped bottoms to its top."""

    num_axes_on_reshape = "bottom num_axes may not change"
    min_bottom_blobs = 1
    exact_num_top_blobs, min_top_blobs = -1, 1
    equal_num_bottom_top_blobs = True

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        self.axis, self.kernel, self.stride, self.pad, self.dilation = conv_geometry(
            self, p, bottom_shapes[0], allow_hole=False)
        shape, c, out, self.group = conv_channels(self, p, bottom_shapes, self.axis)
        self.add_blob((c, out // self.group) + self.kernel, p.weight_filler)
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.add_blob((out,), p.bias_filler)
        sizes = [deconv_out(s, k, q, st, d) for s, k, q, st, d in
                 zip(shape[self.axis + 1:], self.kernel, self.pad, self.stride, self.dilation)]
        return [spatial_top(self, shape, self.axis, out, sizes, transposed=True)] * len(bottom_shapes)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        return tuple(self._one(x, bias) for x in xs)

    def _one(self, x, bias):
        y = deconvolve(batch_view(x, self.axis), self.blobs[0], bias, self.stride, self.pad, self.dilation,
                       self.group)
        return y if self.axis == 1 else y.reshape(tuple(x.shape[:self.axis]) + tuple(y.shape[1:]))


@register("Im2col")
class Im2col(Layer):
    """Each output position's receptive field as a column, over 1 or more spatial axes:
    batch axes x (C k1 k2 ...) x O1 x O2 ..., channel major, then the kernel axes in order
    (Caffe's im2col / im2col_nd order)."""

    num_axes_on_reshape = "bottom num_axes may not change"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        shape = bottom_shapes[0]
        self.axis, self.kernel, self.stride, self.pad, self.dilation = conv_geometry(
            self, self.param.convolution_param, shape)
        if not self.kernel:
            raise self.error(f"needs at least one spatial axis after the channel axis {self.axis}; "
                             f"bottom shape {tuple(shape)}")
        c = shape[self.axis]
        sizes = [conv_out(s, k, q, st, d) for s, k, q, st, d in
                 zip(shape[self.axis + 1:], self.kernel, self.pad, self.stride, self.dilation)]
        cols = None if c is None else c * math.prod(self.kernel)
        return [spatial_top(self, shape, self.axis, cols, sizes)]

    def forward(self, x):
        xb = batch_view(x, self.axis)
        num, c = xb.shape[:2]
        if len(self.kernel) == 2:
            oh, ow = (conv_out(s, k, q, st, d) for s, k, q, st, d in
                      zip(xb.shape[2:], self.kernel, self.pad, self.stride, self.dilation))
            y = F.unfold(xb, self.kernel, self.dilation, self.pad, self.stride).reshape(num, -1, oh, ow)
        else:
            n = len(self.kernel)
            cols = windows(xb, self.kernel, self.stride, self.pad, self.dilation)   # num, C, O..., K...
            order = (0, 1) + tuple(range(2 + n, 2 + 2 * n)) + tuple(range(2, 2 + n))
            y = cols.permute(order).reshape((num, -1) + tuple(cols.shape[2:2 + n]))
        return (y if self.axis == 1 else y.reshape(tuple(x.shape[:self.axis]) + tuple(y.shape[1:])),)
