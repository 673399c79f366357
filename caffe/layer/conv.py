"""Convolution, with the DeepLab fork's 'hole' (atrous) spelling of dilation, and the
convolution_param reading that Convolution, Deconvolution and Im2col share."""
from __future__ import annotations

import torch.nn.functional as F

from . import Layer, register, spatial


def conv_out(size, kernel, pad, stride, dilation):
    """Caffe's (and PyTorch's) output size: floor((in + 2p - (d(k-1)+1)) / s) + 1."""
    if size is None:
        return None
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def conv_geometry(layer, p, allow_hole: bool = True):
    """(kernel, stride, pad, dilation) as (h, w) pairs from a ConvolutionParameter, checked as
    Caffe does: kernel_size OR kernel_h and kernel_w (likewise stride, pad), dilation default
    1. The fork's hole / hole_h / hole_w (its Convolution and Im2col) is the dilation;
    ``allow_hole`` False refuses it (Deconvolution, which the fork does not have)."""
    has = p.HasField
    kernel = spatial(p.kernel_size, None, p.kernel_h if has("kernel_h") else None,
                     p.kernel_w if has("kernel_w") else None, None, "kernel", layer)
    stride = spatial(p.stride, None, p.stride_h if has("stride_h") else None,
                     p.stride_w if has("stride_w") else None, 1, "stride", layer)
    pad = spatial(p.pad, None, p.pad_h if has("pad_h") else None,
                  p.pad_w if has("pad_w") else None, 0, "pad", layer)
    if has("hole") or has("hole_h") or has("hole_w"):
        if not allow_hole:
            raise layer.error("hole is the DeepLab fork's field for Convolution and Im2col; use dilation")
        if len(p.dilation):
            raise layer.error("give dilation or hole, not both")
        dilation = spatial([], p.hole if has("hole") else None, p.hole_h if has("hole_h") else None,
                           p.hole_w if has("hole_w") else None, 1, "hole", layer)
    else:
        dilation = spatial(p.dilation, None, None, None, 1, "dilation", layer)
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
        raise layer.error("kernel, stride and dilation must be positive")
    if p.axis != 1 or p.force_nd_im2col:
        raise layer.error("only 2-D convolution over axis 1 is supported")
    return kernel, stride, pad, dilation


def conv_channels(layer, p, bottom_shapes):
    """BaseConvolutionLayer's checks on the bottoms and num_output / group: every bottom of one
    4-axis shape with a known channel count, num_output > 0, group dividing both channel
    counts. Returns (shape of bottom 0, num_output, group)."""
    for i, s in enumerate(bottom_shapes[1:], 1):
        if s != bottom_shapes[0]:
            raise layer.error(f"all bottoms must have the same shape: bottom {i} is {s}, bottom 0 {bottom_shapes[0]}")
    if len(bottom_shapes[0]) != 4:
        raise layer.error(f"takes 4-axis (N, C, H, W) bottoms, got shape {bottom_shapes[0]}")
    c = bottom_shapes[0][1]
    group, out = int(p.group), int(p.num_output)
    if out < 1:
        raise layer.error("num_output must be positive")
    if c is None:
        raise layer.error("the bottoms' channel count must be known")
    if group < 1 or c % group or out % group:
        raise layer.error(f"channels ({c}) and num_output ({out}) must be divisible by group ({group})")
    return tuple(bottom_shapes[0]), out, group


@register("Convolution")
class Convolution(Layer):
    """2-D convolution: pad, kernel, stride, dilation (or hole), group, bias_term, fillers.
    As Caffe's BaseConvolutionLayer, several bottoms of one shape are each convolved with
    the same weights, top i from bottom i."""

    min_bottom_blobs = 1
    exact_num_top_blobs = -1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, p)
        (n, c, h, w), out, self.group = conv_channels(self, p, bottom_shapes)
        self.add_blob((out, c // self.group) + self.kernel, p.weight_filler)
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.add_blob((out,), p.bias_filler)
        oh = conv_out(h, self.kernel[0], self.pad[0], self.stride[0], self.dilation[0])
        ow = conv_out(w, self.kernel[1], self.pad[1], self.stride[1], self.dilation[1])
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            raise self.error(f"input {h}x{w} is smaller than the dilated kernel; output would be {oh}x{ow}")
        return [(n, out, oh, ow)] * len(bottom_shapes)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        return tuple(F.conv2d(x, self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group) for x in xs)
