"""Deconvolution (transposed convolution) and Im2col, with Caffe's convolution_param
geometry (kernel/stride/pad/dilation, square or _h/_w)."""
from __future__ import annotations

import torch.nn.functional as F

from . import Layer, register
from .conv import conv_channels, conv_geometry, conv_out


def deconv_out(size, kernel, pad, stride, dilation):
    """Caffe's deconvolution output size: s (in - 1) + d (k - 1) + 1 - 2p."""
    if size is None:
        return None
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


@register("Deconvolution")
class Deconvolution(Layer):
    """Transposed 2-D convolution (the gradient of Convolution w.r.t. its input): weights
    C_in x (num_output / group) x kh x kw, as Caffe stores them; optional bias. Like
    Caffe's BaseConvolutionLayer it maps each of several same-shaped bottoms to its top."""

    min_bottom_blobs = 1
    exact_num_top_blobs, min_top_blobs = -1, 1
    equal_num_bottom_top_blobs = True

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, p, allow_hole=False)
        (n, c, h, w), out, self.group = conv_channels(self, p, bottom_shapes)
        self.add_blob((c, out // self.group) + self.kernel, p.weight_filler)
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.add_blob((out,), p.bias_filler)
        oh = deconv_out(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        ow = deconv_out(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            raise self.error(f"output would be {oh}x{ow}: pad is too large")
        return [(n, out, oh, ow)] * len(bottom_shapes)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        return tuple(F.conv_transpose2d(x, self.blobs[0], bias, self.stride, self.pad, 0, self.group, self.dilation)
                     for x in xs)


@register("Im2col")
class Im2col(Layer):
    """Each output position's receptive field as a column: N x (C kh kw) x OH x OW, channel
    major, then kernel row, then kernel column (Caffe's im2col order)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, self.param.convolution_param)
        n, c, h, w = bottom_shapes[0]
        oh = conv_out(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        ow = conv_out(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            raise self.error(f"input {h}x{w} is smaller than the dilated kernel")
        cols = None if c is None else c * self.kernel[0] * self.kernel[1]
        return [(n, cols, oh, ow)]

    def forward(self, x):
        n, c, h, w = x.shape
        oh = conv_out(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        ow = conv_out(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        cols = F.unfold(x, self.kernel, self.dilation, self.pad, self.stride)
        return (cols.reshape(n, -1, oh, ow),)
