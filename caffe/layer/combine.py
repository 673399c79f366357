"""Layers that combine or drop blobs: Eltwise (SUM with coeff, PROD, MAX), Concat, Silence."""
from __future__ import annotations

import torch

from .base import Layer, register
from .shape_ops import canonical_axis

PROD, SUM, MAX = 0, 1, 2


@register("Eltwise")
class Eltwise(Layer):
    """Element-wise PROD, SUM (each bottom times its coeff, default 1) or MAX.

    PROD's gradient is always the product of the other bottoms (``stable_prod_grad: true``);
    Caffe's ``false`` divides the top by the bottom instead, which equals it except where a
    bottom is 0 (there Caffe's gives inf/NaN)."""

    min_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.eltwise_param
        self.op = int(p.operation)
        self.coeff = [float(c) for c in p.coeff]
        if self.coeff and (self.op != SUM or len(self.coeff) != len(bottom_shapes)):
            raise self.error("coeff is for SUM only, one per bottom")
        first = bottom_shapes[0]
        for i, s in enumerate(bottom_shapes[1:], 1):
            if any(x is not None and y is not None and x != y for x, y in zip(first, s)):
                raise self.error(f"bottom {i} has shape {s}, bottom 0 has {first}; they must match")
        return [first]

    def forward(self, *xs):
        if self.op == SUM:
            coeff = self.coeff or [1.0] * len(xs)
            out = xs[0] * coeff[0] if coeff[0] != 1.0 else xs[0]
            for c, x in zip(coeff[1:], xs[1:]):
                out = out + (x * c if c != 1.0 else x)
            return (out,)
        out = xs[0]
        for x in xs[1:]:
            if self.op == PROD:
                out = out * x
            else:
                # Caffe keeps the first maximum (a later bottom wins only if strictly greater)
                # and sends the whole gradient there; torch.maximum would split it on ties.
                out = torch.where(x > out, x, out)
        return (out,)


@register("Concat")
class Concat(Layer):
    """Concatenate bottoms along ``axis`` (or the deprecated ``concat_dim``)."""

    num_axes_on_reshape = "setup"
    min_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.concat_param
        if p.HasField("concat_dim") and p.HasField("axis"):
            raise self.error("give either axis or concat_dim (deprecated), not both")
        self.axis = canonical_axis(p.concat_dim if p.HasField("concat_dim") else p.axis, len(bottom_shapes[0]),
                                   self, "concat_dim" if p.HasField("concat_dim") else "axis")
        out = list(bottom_shapes[0])
        for i, s in enumerate(bottom_shapes[1:], 1):
            for ax, (x, y) in enumerate(zip(bottom_shapes[0], s)):
                if ax != self.axis and x is not None and y is not None and x != y:
                    raise self.error(f"bottom {i} has shape {s}, bottom 0 has {bottom_shapes[0]}; "
                                     f"all axes but {self.axis} must match")
            out[self.axis] = None if out[self.axis] is None or s[self.axis] is None else out[self.axis] + s[self.axis]
        return [tuple(out)]

    def forward(self, *xs):
        return (torch.cat(xs, dim=self.axis),)


@register("Silence")
class Silence(Layer):
    """Consumes its bottoms and produces nothing (so they are not reported as outputs)."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def setup(self, bottom_shapes):
        return []

    def forward(self, *xs):
        return ()
