"""Scale and Bias: multiply / add a blob broadcast over bottom[0] from ``axis`` on.

The factor (or addend) is the second bottom, or else a learnable blob whose shape is
bottom[0]'s axes [axis, axis + num_axes) (num_axes -1: to the end; 0: a scalar).
"""
from __future__ import annotations

import torch

from .base import Layer, register
from .shape_ops import canonical_axis


def _operand_shape(layer, shape, axis, num_axes, what):
    """bottom[0]'s dims that a learnable ``what`` blob covers (Caffe's LayerSetUp rule)."""
    if num_axes < -1:
        raise layer.error("num_axes must be non-negative, or -1 to extend to the end of bottom[0]")
    if num_axes >= 0 and len(shape) < axis + num_axes:
        raise layer.error(f"{what} blob's shape extends past bottom[0]'s shape when applied "
                          f"starting with bottom[0] axis = {axis}")
    dims = tuple(shape[axis:] if num_axes == -1 else shape[axis:axis + num_axes])
    if None in dims:
        raise layer.error(f"bottom[0]'s dims {dims} under the {what} must be known")
    return dims


def _check_operand(layer, shape, operand, axis, what):
    """Caffe's Reshape check: the operand's dims equal bottom[0]'s from ``axis`` on."""
    if len(shape) < axis + len(operand):
        raise layer.error(f"{what} blob's shape {operand} extends past bottom[0]'s shape {shape} "
                          f"when applied starting with bottom[0] axis = {axis}")
    for i, d in enumerate(operand):
        b = shape[axis + i]
        if None not in (b, d) and b != d:
            raise layer.error(f"dimension mismatch between bottom[0]->shape({axis + i}) = {b} "
                              f"and {what}->shape({i}) = {d}")


def _broadcast(t, axis, ndim):
    """``t`` viewed with ones around it so that it lines up with axis ``axis`` of an
    ``ndim``-axis blob."""
    return t.reshape((1,) * axis + tuple(t.shape) + (1,) * (ndim - axis - t.dim()))


@register("Bias")
class Bias(Layer):
    """top = bottom[0] + b, b broadcast from ``axis`` (bias_param; default axis 1, num_axes 1,
    filler constant 0)."""

    min_bottom_blobs, max_bottom_blobs = 1, 2

    def setup(self, bottom_shapes):
        p = self.param.bias_param
        shape = bottom_shapes[0]
        if len(bottom_shapes) == 1:
            axis = canonical_axis(p.axis, len(shape), self)
            self.add_blob(_operand_shape(self, shape, axis, int(p.num_axes), "bias"), p.filler)
            operand = tuple(self.blobs[0].shape)
        else:
            operand = bottom_shapes[1]
        self.axis = 0 if len(operand) == 0 else canonical_axis(p.axis, len(shape), self)
        _check_operand(self, shape, operand, self.axis, "bias")
        return [shape]

    def forward(self, x, b=None):
        b = self.blobs[0] if b is None else b
        return (x + _broadcast(b, self.axis, x.dim()),)

    def channel_affine(self):
        """(a, b) per channel with top = a x + b when the bias is a learnable blob over axis 1
        alone; None otherwise (caffe/inference.py folds it into a preceding convolution)."""
        if len(self.bottom_axes) != 1 or self.axis != 1 or self.blobs[0].dim() != 1:
            return None
        b = self.blobs[0].detach().double()
        return torch.ones_like(b), b


@register("Scale")
class Scale(Layer):
    """top = bottom[0] * s (+ b), s broadcast from ``axis`` (scale_param; default axis 1,
    num_axes 1, filler constant 1). With ``bias_term`` a bias of the same layout follows
    (bias_filler, default constant 0); blobs are [scale, bias], or [bias] when the scale
    is the second bottom."""

    min_bottom_blobs, max_bottom_blobs = 1, 2

    def setup(self, bottom_shapes):
        p = self.param.scale_param
        shape = bottom_shapes[0]
        if len(bottom_shapes) == 1:
            axis = canonical_axis(p.axis, len(shape), self)
            filler = p.filler
            if not p.HasField("filler"):
                from ..proto import caffe_pb2
                filler = caffe_pb2.FillerParameter(type="constant", value=1)
            self.add_blob(_operand_shape(self, shape, axis, int(p.num_axes), "scale"), filler)
            operand = tuple(self.blobs[0].shape)
        else:
            operand = bottom_shapes[1]
        self.axis = 0 if len(operand) == 0 else canonical_axis(p.axis, len(shape), self)
        _check_operand(self, shape, operand, self.axis, "scale")
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            bias_axis = canonical_axis(p.axis, len(shape), self)
            num_axes = len(operand) if len(bottom_shapes) > 1 else int(p.num_axes)
            self.add_blob(_operand_shape(self, shape, bias_axis, num_axes, "bias"), p.bias_filler)
            self.bias_axis = 0 if self.blobs[-1].dim() == 0 else bias_axis
        return [shape]

    def forward(self, x, s=None):
        s = self.blobs[0] if s is None else s
        y = x * _broadcast(s, self.axis, x.dim())
        if self.bias_term:
            y = y + _broadcast(self.blobs[-1], self.bias_axis, x.dim())
        return (y,)

    def channel_affine(self):
        """(a, b) per channel with top = a x + b when the factor (and bias) are learnable blobs
        over axis 1 alone; None otherwise (caffe/inference.py folds it into a preceding
        convolution)."""
        if len(self.bottom_axes) != 1 or self.axis != 1 or self.blobs[0].dim() != 1:
            return None
        a = self.blobs[0].detach().double()
        if not self.bias_term:
            return a, torch.zeros_like(a)
        if self.bias_axis != 1 or self.blobs[-1].dim() != 1:
            return None
        return a, self.blobs[-1].detach().double()
