"""The SegNet / ENet / PSPNet forks' layers: BN (both forks' versions), Upsample and
DenseImageData.

Sources (facts only): alexgkendall/caffe-segnet src/caffe/layers/bn_layer.cpp,
upsample_layer.cpp, dense_image_data_layer.cpp (identical in TimoSaemann/caffe-segnet-cudnn5
and caffe-enet, which adds label_divide_factor); hszhao/PSPNet src/caffe/layers/bn_layer.cpp.
The schema and its field numbers: caffe.proto (BNParameter's header says how the two forks'
"BN" parameters share one message).
"""
from __future__ import annotations

import torch

from . import Layer, register
from .data import _SourceLayer

_SEGNET_FIELDS = ("scale_filler", "shift_filler", "bn_mode")
_PSPNET_FIELDS = ("slope_filler", "bias_filler", "momentum", "eps", "frozen", "engine")
LEARN, INFERENCE = 0, 1   # BNParameter.BNMode
SEGNET_EPS = 1e-9         # caffe-segnet bn_layer.cpp LayerSetUp: var_eps_ = 1e-9


class _NormalizeFn(torch.autograd.Function):
    """y = scale * (x - mean) * inv_std + shift per channel (axis 1), mean and inv_std given
    (no gradient into them). Backward as both forks' Backward_cpu write it, with x_norm and
    inv_std saved by the forward: dscale = sum(dy x_norm), dshift = sum(dy),
    dx = inv_std (s dy - mean(s dy) - x_norm mean(s dy x_norm)), means over N, H, W. With
    batch statistics this is the exact gradient; with stored ones (PSPNet's BN in TEST,
    not frozen) it is what the fork computes all the same."""

    @staticmethod
    def forward(ctx, x, scale, shift, mean, inv_std):
        x_norm = (x - mean) * inv_std
        ctx.save_for_backward(x_norm, scale, inv_std)
        return x_norm * scale + shift

    @staticmethod
    def backward(ctx, dy):
        x_norm, scale, inv_std = ctx.saved_tensors
        dims = [0] + list(range(2, dy.dim()))
        dscale = (dy * x_norm).sum(dims, keepdim=True)
        dshift = dy.sum(dims, keepdim=True)
        g = dy * scale
        dx = inv_std * (g - g.mean(dims, keepdim=True) - x_norm * (g * x_norm).mean(dims, keepdim=True))
        return dx, dscale.reshape(scale.shape), dshift.reshape(scale.shape), None, None


@register("BN")
class BN(Layer):
    """The forks' batch normalisation with its own scale and shift, per channel (axis 1).

    SegNet's (caffe-segnet bn_layer.cpp), chosen unless a PSPNet-only field is set: blobs
    scale, shift (1 x C x 1 x 1; fillers scale_filler, shift_filler, default constant 0).
    ``bn_mode: LEARN`` (the default, in every phase) normalises with the batch's mean and
    variance E(x^2) - E(x)^2 plus 1e-9 and stores nothing; tops 1 and 2 (optional) are the
    batch mean and variance (1 x C x 1 x 1, no gradient). ``bn_mode: INFERENCE`` computes
    y = scale * x + shift (SegNet's compute_bn_statistics.py folds the statistics into
    scale and shift), one top.

    PSPNet's (hszhao/PSPNet bn_layer.cpp): blobs slope, bias, running mean, running
    variance (1 x C x 1 x 1; the variance starts at 1 when ``frozen``, else 0). TRAIN, not
    frozen: batch mean and biased variance, and stat = (1 - momentum) batch + momentum stat;
    TEST or ``frozen``: the stored statistics. y = slope (x - mean) / sqrt(var + eps) + bias.
    The statistics get lr_mult 0 and decay_mult 0, and so do slope and bias when frozen."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = -1
    min_top_blobs, max_top_blobs = 1, 3

    def setup(self, bottom_shapes):
        p = self.param.bn_param
        psp = [f for f in _PSPNET_FIELDS if p.HasField(f)]
        seg = [f for f in _SEGNET_FIELDS if p.HasField(f)]
        if psp and seg:
            raise self.error(f"bn_param mixes SegNet's BN fields ({', '.join(seg)}) with PSPNet's "
                             f"({', '.join(psp)}); the two forks' BN layers differ, use one's fields")
        self.pspnet = bool(psp)
        shape = bottom_shapes[0]
        if len(shape) < 2 or shape[1] is None:
            raise self.error(f"needs a bottom with a known channel axis (axis 1), got shape {shape}")
        c = int(shape[1])
        if self.pspnet:
            if self.top_count != 1:
                raise self.error(f"PSPNet's BN takes exactly 1 top blob, got {self.top_count}")
            self.frozen, self.momentum, self.eps = bool(p.frozen), float(p.momentum), float(p.eps)
            from ..proto import caffe_pb2
            self.add_blob((1, c, 1, 1), p.slope_filler)
            self.add_blob((1, c, 1, 1), p.bias_filler)
            self.add_blob((1, c, 1, 1), caffe_pb2.FillerParameter(type="constant", value=0))
            self.add_blob((1, c, 1, 1), caffe_pb2.FillerParameter(type="constant", value=1 if self.frozen else 0))
            param = type(self.param)()
            param.CopyFrom(self.param)
            while len(param.param) < 4:
                param.param.add()
            for i in (0, 1, 2, 3) if self.frozen else (2, 3):
                param.param[i].lr_mult = 0.0
                param.param[i].decay_mult = 0.0
            self.param = param
            return [tuple(shape)]
        self.mode = int(p.bn_mode)
        if self.mode != LEARN and self.top_count != 1:
            raise self.error(f"takes 1 top blob with bn_mode INFERENCE (up to 3 with LEARN), got {self.top_count}")
        self.add_blob((1, c, 1, 1), p.scale_filler)
        self.add_blob((1, c, 1, 1), p.shift_filler)
        return [tuple(shape)] + [(1, c, 1, 1)] * (self.top_count - 1)

    def forward(self, x):
        nd = x.dim()
        view = (1, -1) + (1,) * (nd - 2)
        dims = [0] + list(range(2, nd))
        scale, shift = self.blobs[0].reshape(view), self.blobs[1].reshape(view)
        if self.pspnet:
            if self.frozen or self.phase == "TEST":
                mean = self.blobs[2].detach().reshape(view)
                inv_std = (self.blobs[3].detach().reshape(view) + self.eps).rsqrt()
                if self.frozen:   # the fork's frozen backward: dx = dy slope / std, nothing else
                    return ((x - mean) * inv_std * scale + shift,)
            else:
                xd = x.detach()
                mean = xd.mean(dims, keepdim=True)
                var = (xd - mean).pow(2).mean(dims, keepdim=True)
                with torch.no_grad():
                    m = self.momentum
                    self.blobs[2].mul_(m).add_((1 - m) * mean.reshape(self.blobs[2].shape))
                    self.blobs[3].mul_(m).add_((1 - m) * var.reshape(self.blobs[3].shape))
                inv_std = (var + self.eps).rsqrt()
            return (_NormalizeFn.apply(x, scale, shift, mean, inv_std),)
        if self.mode == INFERENCE:
            return (x * scale + shift,)
        xd = x.detach()
        mean = xd.mean(dims, keepdim=True)
        var = xd.pow(2).mean(dims, keepdim=True) - mean.pow(2)   # E(X^2) - (EX)^2, as the fork
        y = _NormalizeFn.apply(x, scale, shift, mean, (var + SEGNET_EPS).rsqrt())
        return (y, mean.reshape(1, -1, 1, 1), var.reshape(1, -1, 1, 1))[:self.top_count]


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


@register("DenseImageData")
class DenseImageData(_SourceLayer):
    """SegNet's image + label-image source (caffe.dense_image_data): data N x C x H x W,
    label N x 1 x H x W (H x W: crop_height x crop_width, else new_height x new_width, else
    the first image's; the label's divided by label_divide_factor)."""

    label_tops = (1,)
