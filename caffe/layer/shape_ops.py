"""Layers that move data without computing on it: Split, Flatten, Reshape, Slice, Tile,
Filter, BatchReindex; plus Caffe's axis helpers (CanonicalAxisIndex, count) the other
catalogue modules share."""
from __future__ import annotations

import torch

from .base import Layer, register


def canonical_axis(axis: int, num_axes: int, layer, what: str = "axis") -> int:
    """Caffe's Blob::CanonicalAxisIndex, the one axis check of every layer with an axis
    parameter: -num_axes <= axis < num_axes, negatives count from the end; else an error
    naming the layer and ``what`` (the parameter) — never a wrapped axis."""
    axis = int(axis)
    if not -num_axes <= axis < num_axes:
        raise layer.error(f"{what} {axis} out of range for a {num_axes}-D blob")
    return axis % num_axes


def count(shape, start: int = 0, end: int | None = None):
    """Caffe's Blob::count(start, end): product of the dims in [start, end); None if unknown."""
    total = 1
    for d in tuple(shape)[start:end]:
        if d is None:
            return None
        total *= int(d)
    return total


@register("Split")
class Split(Layer):
    """Gives its bottom to every top; the tops share the bottom's data (Caffe's ShareData),
    and their gradients add up (autograd's rule for a reused tensor)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs, min_top_blobs = -1, 1

    def setup(self, bottom_shapes):
        if self.top_count < 1:
            raise self.error("needs at least one top")
        for t in self.param.top:
            if t == self.param.bottom[0] and self.top_count > 1:
                raise self.error("does not allow in-place computation on one of several tops")
        return [bottom_shapes[0]] * self.top_count

    def forward(self, x):
        return (x,) * len(self.top_shapes)


def _flatten_shape(shape, start, end):
    return tuple(shape[:start]) + (count(shape, start, end + 1),) + tuple(shape[end + 1:])


@register("Flatten")
class Flatten(Layer):
    """Collapses axes ``axis`` (default 1) .. ``end_axis`` (default -1, inclusive) into one."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        if self.param.top[0] == self.param.bottom[0]:
            raise self.error("Flatten does not allow in-place computation")
        p = self.param.flatten_param
        nd = len(bottom_shapes[0])
        self.start = canonical_axis(p.axis, nd, self)
        self.end = canonical_axis(p.end_axis, nd, self)
        return [_flatten_shape(bottom_shapes[0], self.start, self.end)]

    def forward(self, x):
        return (x.reshape(_flatten_shape(x.shape, self.start, self.end)),)


@register("Reshape")
class Reshape(Layer):
    """Caffe's Reshape: ``shape`` replaces axes [axis, axis + num_axes) of the bottom (axis < 0
    counts from the end, -1 meaning after the last; num_axes -1 means to the end); a 0 copies
    the bottom's dim at that position, one -1 is inferred from the count."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        if self.param.top[0] == self.param.bottom[0]:
            raise self.error("Reshape does not allow in-place computation")
        dims = [int(d) for d in self.param.reshape_param.shape.dim]
        if dims.count(-1) > 1:
            raise self.error("new shape contains multiple -1 dims; at most a single (1) value of -1 may be specified")
        if any(d < -1 for d in dims):
            raise self.error(f"shape dims must be >= -1, got {dims}")
        self.dims = dims
        return [self.top_shape(bottom_shapes[0])]

    def top_shape(self, bottom) -> tuple:
        """The top's shape for a bottom of shape ``bottom`` (dims may be None when unknown)."""
        p = self.param.reshape_param
        nd = len(bottom)
        start = p.axis if p.axis >= 0 else nd + p.axis + 1
        if not 0 <= start <= nd:
            raise self.error(f"axis {p.axis} out of range for a {nd}-D input blob")
        if p.num_axes < -1:
            raise self.error("num_axes must be >= 0, or -1 for all")
        end = nd if p.num_axes == -1 else start + p.num_axes
        if end > nd:
            raise self.error(f"end_axis = axis + num_axes = {end} is out of range for a {nd}-D blob")
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= nd:
                    raise self.error("new shape contains a 0, but there was no corresponding bottom axis to copy")
                new[i] = bottom[start + i]
        top = list(bottom[:start]) + new + list(bottom[end:])
        total = count(bottom)
        if -1 in new:
            k = start + new.index(-1)
            known = count([d for i, d in enumerate(top) if i != k])
            if total is None or known is None:
                top[k] = None
            else:
                if known == 0 or total % known:
                    raise self.error(f"bottom count ({total}) must be divisible by the product of the "
                                     f"specified dimensions ({known})")
                top[k] = total // known
        elif total is not None and count(top) is not None and count(top) != total:
            raise self.error(f"output count {count(top)} (shape {tuple(top)}) must match input count "
                             f"{total} (shape {tuple(bottom)})")
        return tuple(top)

    def forward(self, x):
        return (x.reshape(self.top_shape(tuple(x.shape))),)


@register("Slice")
class Slice(Layer):
    """Cuts the bottom along ``axis`` (or the deprecated ``slice_dim``) at ``slice_point``s,
    or into equal parts when none are given."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 1
    exact_num_top_blobs, min_top_blobs = -1, 1

    def setup(self, bottom_shapes):
        p = self.param.slice_param
        shape = bottom_shapes[0]
        if p.HasField("slice_dim"):
            if p.HasField("axis"):
                raise self.error("either axis or slice_dim should be specified; not both")
            self.axis = int(p.slice_dim)
        else:
            self.axis = canonical_axis(p.axis, len(shape), self)
        if not 0 <= self.axis < len(shape):
            raise self.error(f"slice_dim {self.axis} out of range for a {len(shape)}-D blob")
        n = self.top_count
        if n < 1:
            raise self.error("needs at least one top")
        total = shape[self.axis]
        points = [int(v) for v in p.slice_point]
        if points:
            if len(points) != n - 1:
                raise self.error(f"{len(points)} slice_points for {n} tops; give {n - 1}")
            if any(b <= a for a, b in zip([0] + points, points)) or (total is not None and points[-1] >= total):
                raise self.error(f"slice_points {points} must increase strictly inside 0..{total}")
            self.sizes = [b - a for a, b in zip([0] + points, points)]
            self.sizes.append(None if total is None else total - points[-1])
        else:
            if total is not None and total % n:
                raise self.error(f"axis {self.axis} of size {total} does not split into {n} equal parts")
            self.sizes = None
            each = None if total is None else total // n
        tops = []
        for i in range(n):
            s = list(shape)
            s[self.axis] = self.sizes[i] if self.sizes else each
            tops.append(tuple(s))
        return tops

    def forward(self, x):
        if self.sizes is None:
            return tuple(torch.chunk(x, len(self.top_shapes), dim=self.axis))
        sizes = self.sizes[:-1] + [x.shape[self.axis] - sum(self.sizes[:-1])]
        return tuple(torch.split(x, sizes, dim=self.axis))


@register("Tile")
class Tile(Layer):
    """Repeats the block of axes ``axis``.. (default 1) ``tiles`` times along ``axis``."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.tile_param
        shape = list(bottom_shapes[0])
        self.axis = canonical_axis(p.axis, len(shape), self)
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        self.tiles = int(p.tiles)
        if self.tiles < 1:
            raise self.error("tiles must be positive")
        if shape[self.axis] is not None:
            shape[self.axis] *= self.tiles
        return [tuple(shape)]

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return (x.repeat(*reps),)


@register("Filter")
class Filter(Layer):
    """Keeps the items (along axis 0) of every bottom but the last whose selector (the last
    bottom, one value per item) is non-zero. The kept count is only known at run time."""

    min_bottom_blobs = 2
    exact_num_top_blobs, min_top_blobs = -1, 1

    no_gradient_to = {-1: "the selector"}

    def setup(self, bottom_shapes):
        if len(bottom_shapes) < 2:
            raise self.error("needs at least one data bottom and the selector bottom")
        if self.top_count != len(bottom_shapes) - 1:
            raise self.error(f"needs one top per data bottom ({len(bottom_shapes) - 1}), got {self.top_count}")
        sel = bottom_shapes[-1]
        if len(sel) > 1 and count(sel, 1) not in (1, None):
            raise self.error(f"the selector must hold one value per item, got shape {sel}")
        for i, s in enumerate(bottom_shapes[:-1]):
            if None not in (s[0], sel[0]) and s[0] != sel[0]:
                raise self.error(f"bottom {i} has {s[0]} items but the selector has {sel[0]}")
        return [(None,) + tuple(s[1:]) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        selector = bottoms[-1].detach().reshape(bottoms[-1].shape[0])
        index = torch.nonzero(selector != 0).reshape(-1)
        return tuple(b.index_select(0, index) for b in bottoms[:-1])


@register("BatchReindex")
class BatchReindex(Layer):
    """top[i] = bottom[permut[i]] along axis 0 (items may repeat; their gradients add up)."""

    exact_num_bottom_blobs = 2

    no_gradient_to = {1: "the indices"}

    def setup(self, bottom_shapes):
        data, permut = bottom_shapes
        if len(permut) != 1:
            raise self.error(f"the index bottom must be 1-D, got shape {permut}")
        return [(permut[0],) + tuple(data[1:])]

    def forward(self, x, permut):
        index = permut.detach().long().reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= x.shape[0]):
            raise self.error(f"indices must lie in 0..{x.shape[0] - 1}")
        return (x.index_select(0, index),)


SUM, ASUM, SUMSQ, MEAN = 1, 2, 3, 4


@register("Reduction")
class Reduction(Layer):
    """Reduces all axes from ``axis`` (default 0) on with SUM (default), ASUM, SUMSQ or MEAN,
    times ``coeff`` (default 1); the top keeps the axes before ``axis``. The gradient of
    ASUM is coeff * sign(x), 0 at 0 (Caffe's caffe_cpu_sign)."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.reduction_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(p.axis, len(shape), self) if shape else 0
        self.op = int(p.operation)
        if self.op not in (SUM, ASUM, SUMSQ, MEAN):
            raise self.error(f"unknown reduction operation {self.op}")
        self.coeff = float(p.coeff)
        return [tuple(shape[:self.axis])]

    def forward(self, x):
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        if self.op == ASUM:
            flat = flat.abs()
        elif self.op == SUMSQ:
            flat = flat * flat
        y = flat.mean(-1) if self.op == MEAN else flat.sum(-1)
        return (y * self.coeff if self.coeff != 1 else y,)
