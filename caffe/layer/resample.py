"""Spatial resampling, unpooling and cropping: the fork's Interp and Padding, SegNet's Upsample
(max-unpooling with the pooling mask, caffe-segnet upsample_layer.cpp), Caffe's Crop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, register
from .shape_ops import canonical_axis


def interp_out(size, p):
    """The fork's Interp output size for one axis of effective input ``size``."""
    if size is None:
        return None
    has = p.HasField
    if has("shrink_factor") and not has("zoom_factor"):
        return (size - 1) // p.shrink_factor + 1            # shrink: (in - 1) / s + 1
    if has("zoom_factor") and not has("shrink_factor"):
        return size + (size - 1) * (p.zoom_factor - 1)     # zoom: in + (in - 1)(z - 1)
    if has("shrink_factor") and has("zoom_factor"):
        out = (size - 1) // p.shrink_factor + 1
        return out + (out - 1) * (p.zoom_factor - 1)
    return None


@register("Interp")
class Interp(Layer):
    """Bilinear resize with corners aligned (the fork's caffe_cpu_interp2): output pixel i
    samples input position i * (in - 1) / (out - 1). pad_beg/pad_end (<= 0) crop the input
    first. Size from zoom_factor, shrink_factor, both, or height and width."""

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    min_bottom_blobs = 1
    max_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.interp_param
        has = p.HasField
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.error("only non-positive pad_beg/pad_end (cropping) are supported, as in the fork")
        if has("shrink_factor") and p.shrink_factor < 1:
            raise self.error("shrink_factor must be positive")
        if has("zoom_factor") and p.zoom_factor < 1:
            raise self.error("zoom_factor must be positive")
        self.fixed = None
        if not (has("shrink_factor") or has("zoom_factor")):
            if has("height") and has("width"):
                self.fixed = (int(p.height), int(p.width))
            elif len(bottom_shapes) == 2:
                self.fixed = "bottom1"
            else:
                raise self.error("give zoom_factor, shrink_factor, height and width, or a second bottom")
        self.labels = False   # set by the Net when bottom 0 holds labels
        n, c, h, w = bottom_shapes[0]
        return [(n, c) + self.out_size(h, w, bottom_shapes)]

    def check_label_resampling(self, bottom_shapes) -> None:
        """Called by the Net when bottom 0 holds a data layer's labels: bilinear resampling
        must then only pick pixels (the fork's label shrink relied on it: output pixel i reads
        input position i * (in - 1) / (out - 1), a whole number only for exact geometry), or
        labels blend into other classes (15 next to 255 becomes 22). Sizes unknown now are
        checked at each forward pass."""
        self.labels = True
        h, w = bottom_shapes[0][2:4]
        if h is not None and w is not None:
            self._check_labels(h, w, self.out_size(h, w, bottom_shapes))

    def _check_labels(self, h, w, out) -> None:
        for size, o, axis in ((h, out[0], "height"), (w, out[1], "width")):
            if o is None:
                continue
            eff = size + self.pad_beg + self.pad_end
            if o == eff or o == 1 or (eff - 1) % (o - 1) == 0:
                continue
            p = self.param.interp_param
            shrink = p.HasField("shrink_factor") and not p.HasField("zoom_factor")
            step = p.shrink_factor if shrink else o - 1
            offset = 1 - self.pad_beg - self.pad_end
            rule = f"{step}k + {offset}" + ("" if shrink else f" (for {o} output pixels)")
            good = [k * step + offset for k in ((eff - 1) // step, (eff - 1) // step + 1)]
            good = [g for g in good if g > 0]
            raise self.error(f"resampling labels of {axis} {size} to {o} is not an exact subsampling (input step "
                             f"{eff - 1}/{o - 1}), so bilinear interpolation would blend label values; use a "
                             f"crop size of {rule}, e.g. {' or '.join(map(str, good))}")

    def out_size(self, h, w, bottom_shapes=None):
        if self.fixed == "bottom1":
            return tuple(bottom_shapes[1][2:4])
        if self.fixed is not None:
            return self.fixed
        eff = [None if s is None else s + self.pad_beg + self.pad_end for s in (h, w)]
        return interp_out(eff[0], self.param.interp_param), interp_out(eff[1], self.param.interp_param)

    def forward(self, x, ref=None):
        h, w = x.shape[2:]
        if self.fixed == "bottom1":
            out = tuple(ref.shape[2:4])
        else:
            out = self.out_size(h, w)
        if self.labels:
            self._check_labels(h, w, out)
        if self.pad_beg or self.pad_end:
            x = x[:, :, -self.pad_beg: h + self.pad_end, -self.pad_beg: w + self.pad_end]
        if tuple(x.shape[2:]) == tuple(out):
            return (x,)
        return (F.interpolate(x, size=out, mode="bilinear", align_corners=True),)


@register("Padding")
class Padding(Layer):
    """The fork's Padding: add pad_beg rows/cols before and pad_end after (zeros); negative crops."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.padding_param
        self.beg, self.end = int(p.pad_beg), int(p.pad_end)
        n, c, h, w = bottom_shapes[0]
        grow = self.beg + self.end
        return [(n, c, None if h is None else h + grow, None if w is None else w + grow)]

    def forward(self, x):
        return (F.pad(x, (self.beg, self.end, self.beg, self.end)),)


@register("Crop")
class Crop(Layer):
    """Caffe's Crop: cut bottom 0 to bottom 1's shape from ``axis`` on, at ``offset``."""

    num_axes_on_reshape = "setup"
    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.crop_param
        a, b = bottom_shapes
        self.axis = canonical_axis(p.axis, len(a), self)
        dims = len(a) - self.axis
        offsets = list(p.offset)
        if len(offsets) not in (0, 1, dims):
            raise self.error(f"crop_param.offset needs 0, 1 or {dims} values, got {len(offsets)}")
        self.offsets = [0] * dims if not offsets else (offsets * dims if len(offsets) == 1 else offsets)
        out = list(a)
        for i in range(dims):
            ax = self.axis + i
            if a[ax] is not None and b[ax] is not None and a[ax] < b[ax] + self.offsets[i]:
                raise self.error(f"cannot crop axis {ax} of size {a[ax]} to {b[ax]} at offset {self.offsets[i]}")
            out[ax] = b[ax]
        return [tuple(out)]

    def forward(self, x, ref):
        index = [slice(None)] * self.axis
        for i, off in enumerate(self.offsets):
            size = ref.shape[self.axis + i]
            index.append(slice(off, off + size))
        return (x[tuple(index)],)


class _UnpoolFn(torch.autograd.Function):
    """Max-unpooling of (N*C, H*W) values to (N*C, size) at ``idx``. Forward: the top starts
    at 0 and, as the fork's loop over i, a later i overwrites an earlier one at the same
    index. Backward (the fork's): every i reads the top's gradient at its index."""

    @staticmethod
    def forward(ctx, x, idx, size):
        pos = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)
        winner = torch.full((idx.shape[0], size), -1, dtype=idx.dtype, device=idx.device)
        winner.scatter_reduce_(1, idx, pos, "amax")
        ctx.save_for_backward(idx)
        top = x.gather(1, winner.clamp(min=0))
        return torch.where(winner >= 0, top, torch.zeros_like(top))

    @staticmethod
    def backward(ctx, dtop):
        (idx,) = ctx.saved_tensors
        return dtop.gather(1, idx), None, None


@register("Upsample")
class Upsample(Layer):
    """SegNet's max-unpooling: bottom 0 (values) and bottom 1 (a MAX Pooling layer's mask top,
    the index h * W + w of each maximum in its input plane), same shape; each value goes to
    its index of a zero top plane. Top size: upsample_h x upsample_w when both are set, else
    H * scale_h - pad_out_h by W * scale_w - pad_out_w (scale_h = scale_w = scale, default 2,
    unless scale_h and scale_w are given; pad_out needs scale 2), fixed at the first shape
    seen, as the fork computes it once. An index outside the top plane is an error."""

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    exact_num_bottom_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.upsample_param
        has = p.HasField
        if not ((has("upsample_h") and has("upsample_w")) or (not has("scale") and has("scale_h") and has("scale_w"))
                or (not has("scale_h") and not has("scale_w"))):
            raise self.error("upsample_h & upsample_w are required, else (DEPRECATED) scale OR scale_h & scale_w "
                             "are required")
        if has("upsample_h") and has("upsample_w"):
            self.size = (int(p.upsample_h), int(p.upsample_w))
            if min(self.size) <= 1:
                raise self.error(f"upsample_h and upsample_w must be greater than 1, got {self.size}")
        else:
            self.scale = (int(p.scale_h), int(p.scale_w)) if has("scale_h") else (int(p.scale), int(p.scale))
            if min(self.scale) <= 1:
                raise self.error(f"the scale factors must be greater than 1, got {self.scale}")
            self.pad_out = (int(bool(p.pad_out_h)), int(bool(p.pad_out_w)))
            for pad, s, axis in zip(self.pad_out, self.scale, "hw"):
                if pad and s != 2:
                    raise self.error(f"output {'height' if axis == 'h' else 'width'} padding compensation "
                                     f"(pad_out_{axis}) requires scale_{axis} == 2, otherwise the output size "
                                     "is ill-defined")
            self.size = None
        data, mask = bottom_shapes
        if len(data) != 4 or len(mask) != 4:
            raise self.error(f"bottoms must have 4 axes (num, channels, height, width), got {data} and {mask}")
        if any(a is not None and b is not None and a != b for a, b in zip(data, mask)):
            raise self.error(f"the mask bottom's shape {mask} differs from the data bottom's {data}")
        n, c, h, w = data
        return [(n, c) + self._size(h, w)]

    def _size(self, h, w):
        if self.size is None and h is not None and w is not None:
            self.size = (h * self.scale[0] - self.pad_out[0], w * self.scale[1] - self.pad_out[1])
        return self.size if self.size is not None else (None, None)

    def forward(self, x, mask):
        n, c, h, w = x.shape
        if tuple(mask.shape) != tuple(x.shape):
            raise self.error(f"the mask bottom's shape {tuple(mask.shape)} differs from the data's {tuple(x.shape)}")
        oh, ow = self._size(h, w)
        idx = mask.detach().reshape(n * c, h * w).to(torch.int64)   # static_cast<int>: truncation
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= oh * ow):
            bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
            raise self.error(f"upsample top index {bad} out of range 0..{oh * ow - 1} - check scale settings "
                             "match input pooling layer's downsample setup")
        top = _UnpoolFn.apply(x.reshape(n * c, h * w), idx, oh * ow)
        return (top.reshape(n, c, oh, ow),)

    def allow_force_backward(self, bottom: int) -> bool:
        """The fork's backward writes no gradient into the mask."""
        return bottom == 0
