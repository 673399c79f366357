"""Convolution over any number of spatial axes, with the DeepLab fork's 'hole' (atrous)
spelling of dilation, and the convolution_param reading that Convolution, Deconvolution and
Im2col share (BVLC's base_conv_layer.cpp / im2col_layer.cpp LayerSetUp).

Caffe's N-d rule: ``axis`` (default 1) is the channel axis; the axes before it are batch
axes, every axis after it is spatial. kernel_size / stride / pad / dilation are repeated
fields given once (for every spatial axis) or once per spatial axis; kernel_h/_w, stride_h/_w
and pad_h/_w are for 2-D only. 1-, 2- and 3-D run on torch's conv1d/2d/3d; other counts
(0 spatial axes: a grouped matrix product; 4 and more, which BVLC's CPU im2col_nd allows) on
one generic window-and-einsum path. ``force_nd_im2col`` only picks BVLC's implementation, so it
is accepted and changes nothing here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Layer, register
from .shape_ops import canonical_axis

TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_out(size, kernel, pad, stride, dilation):
    """Caffe's (and PyTorch's) output size: floor((in + 2p - (d(k-1)+1)) / s) + 1."""
    if size is None:
        return None
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def channel_axis(layer, axis: int, shape) -> int:
    """Blob::CanonicalAxisIndex of convolution_param.axis for ``shape``."""
    return canonical_axis(axis, len(shape), layer, "convolution_param axis")


def _per_axis(layer, p, what, field, spatial_axes, default):
    """One of kernel / stride / pad as a tuple per spatial axis, read as BVLC's LayerSetUp
    reads it: ``field`` given once or once per axis, or ``what``_h and ``what``_w (2-D only;
    a missing pad_h / pad_w is 0 as its proto default, a missing kernel or stride one an error)."""
    pair = what != "dilation"     # dilation has no _h / _w
    has_h, has_w = pair and p.HasField(what + "_h"), pair and p.HasField(what + "_w")
    values = [int(v) for v in getattr(p, field)]
    if has_h or has_w:
        if spatial_axes != 2:
            raise layer.error(f"{what}_h and {what}_w can only be used for 2-D convolution "
                              f"(the bottom has {spatial_axes} spatial axes); give {field}")
        if values:
            raise layer.error(f"{what} is {field} OR {what}_h and {what}_w; not both")
        if default is None or what == "stride":
            if not (has_h and has_w):
                raise layer.error(f"for non-square {what}s both {what}_h and {what}_w are required")
        return int(getattr(p, what + "_h")), int(getattr(p, what + "_w"))
    if len(values) == 0 and (default is not None or spatial_axes == 0):
        return (default or 0,) * spatial_axes
    if len(values) == 1:
        return (values[0],) * spatial_axes
    if len(values) == spatial_axes:
        return tuple(values)
    raise layer.error(f"{field} must be given once, or once per spatial axis ({field} given {len(values)} "
                      f"times; {spatial_axes} spatial axes)")


def conv_geometry(layer, p, shape, allow_hole: bool = True):
    """(axis, kernel, stride, pad, dilation) from a ConvolutionParameter for a bottom of
    ``shape``: the channel axis and one entry per spatial axis, checked as Caffe does. The
    DeepLab fork's hole / hole_h / hole_w (2-D, its Convolution and Im2col) is the dilation;
    ``allow_hole`` False refuses it (Deconvolution, which the fork does not have)."""
    axis = channel_axis(layer, int(p.axis), shape)
    n = len(shape) - axis - 1
    kernel = _per_axis(layer, p, "kernel", "kernel_size", n, None)
    stride = _per_axis(layer, p, "stride", "stride", n, 1)
    pad = _per_axis(layer, p, "pad", "pad", n, 0)
    has = p.HasField
    if has("hole") or has("hole_h") or has("hole_w"):
        if not allow_hole:
            raise layer.error("hole is the DeepLab fork's field for Convolution and Im2col; use dilation")
        if len(p.dilation):
            raise layer.error("give dilation or hole, not both")
        if n != 2:
            raise layer.error(f"hole (the DeepLab fork's dilation) is 2-D only; the bottom has {n} spatial "
                              "axes: use dilation")
        if has("hole_h") != has("hole_w") or (has("hole") and has("hole_h")):
            raise layer.error("hole is hole OR hole_h and hole_w (both)")
        dilation = (int(p.hole),) * 2 if has("hole") else (int(p.hole_h), int(p.hole_w))
    else:
        dilation = _per_axis(layer, p, "dilation", "dilation", n, 1)
    if min(kernel + stride + dilation, default=1) < 1:
        raise layer.error("kernel, stride and dilation must be positive")
    return axis, kernel, stride, pad, dilation


def conv_channels(layer, p, bottom_shapes, axis):
    """BaseConvolutionLayer's checks on the bottoms and num_output / group: every bottom of
    one shape with a known channel count, num_output > 0, group dividing both channel
    counts. Returns (shape of bottom 0, channels, num_output, group)."""
    for i, s in enumerate(bottom_shapes[1:], 1):
        if s != bottom_shapes[0]:
            raise layer.error(f"all bottoms must have the same shape: bottom {i} is {s}, bottom 0 {bottom_shapes[0]}")
    c = bottom_shapes[0][axis]
    group, out = int(p.group), int(p.num_output)
    if out < 1:
        raise layer.error("num_output must be positive")
    if c is None:
        raise layer.error("the bottoms' channel count must be known")
    if group < 1 or c % group or out % group:
        raise layer.error(f"channels ({c}) and num_output ({out}) must be divisible by group ({group})")
    return tuple(bottom_shapes[0]), c, out, group


def spatial_top(layer, shape, axis, channels, sizes, transposed=False):
    """The top shape: bottom's batch axes, ``channels``, then ``sizes``; a size below 1 is an error."""
    if any(s is not None and s < 1 for s in sizes):
        ins = "x".join(str(s) for s in shape[axis + 1:])
        outs = "x".join(str(s) for s in sizes)
        if transposed:
            raise layer.error(f"output would be {outs}: pad is too large")
        raise layer.error(f"input {ins} is smaller than the dilated kernel; output would be {outs}")
    return tuple(shape[:axis]) + (channels,) + tuple(sizes)


def windows(x, kernel, stride, pad, dilation):
    """x (num, C, *S) -> (num, C, *O, *K): each output position's dilated kernel window
    (views of the padded input; Caffe's im2col_nd before its final layout)."""
    if any(pad):
        x = F.pad(x, [q for q in reversed(pad) for _ in (0, 1)])
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
    return x


def convolve(x, weight, bias, stride, pad, dilation, groups):
    """Caffe's convolution of x (num, C, *S) by weight (out, C/group, *K): torch's conv1d/2d/3d,
    or for other spatial counts a generic path (windows, then one einsum per group)."""
    fn = TORCH_CONV.get(len(stride))
    if fn is not None:
        return fn(x, weight, bias, stride, pad, dilation, groups)
    num, c = x.shape[:2]
    kernel = tuple(weight.shape[2:])
    cols = windows(x, kernel, stride, pad, dilation)
    out_sizes = tuple(cols.shape[2:2 + len(kernel)])
    cols = cols.reshape(num, groups, c // groups, math.prod(out_sizes), math.prod(kernel))
    w = weight.reshape(groups, weight.shape[0] // groups, c // groups, math.prod(kernel))
    y = torch.einsum("ngcpk,gock->ngop", cols, w).reshape((num, weight.shape[0]) + out_sizes)
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * len(kernel))
    return y


def batch_view(x, axis):
    """x with its batch axes (those before ``axis``) merged into one: (num, C, *S)."""
    if axis == 1:
        return x
    return x.reshape((-1,) + tuple(x.shape[axis:]))


@register("Convolution")
class Convolution(Layer):
    """N-d convolution (1-, 2-, 3-D and beyond, as Caffe allows): pad, kernel, stride,
    dilation (or the fork's hole), group, bias_term, fillers, channel ``axis``. Weights
    num_output x C/group x kernel... As Caffe's BaseConvolutionLayer, several bottoms of one
    shape are each convolved with the same weights, top i from bottom i."""

    num_axes_on_reshape = "bottom num_axes may not change"
    min_bottom_blobs = 1
    exact_num_top_blobs = -1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True

    def setup(self, bottom_shapes):
        p = self.param.convolution_param
        self.axis, self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, p, bottom_shapes[0])
        shape, c, out, self.group = conv_channels(self, p, bottom_shapes, self.axis)
        self.add_blob((out, c // self.group) + self.kernel, p.weight_filler)
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.add_blob((out,), p.bias_filler)
        sizes = [conv_out(s, k, q, st, d) for s, k, q, st, d in
                 zip(shape[self.axis + 1:], self.kernel, self.pad, self.stride, self.dilation)]
        return [spatial_top(self, shape, self.axis, out, sizes)] * len(bottom_shapes)

    def forward(self, *xs):
        bias = self.blobs[1] if self.bias_term else None
        return tuple(self._one(x, bias) for x in xs)

    def _one(self, x, bias):
        y = convolve(batch_view(x, self.axis), self.blobs[0], bias, self.stride, self.pad, self.dilation, self.group)
        return y if self.axis == 1 else y.reshape(tuple(x.shape[:self.axis]) + tuple(y.shape[1:]))
