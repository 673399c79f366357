"""Normalisation layers: BatchNorm (Caffe's three statistic blobs), the SegNet / ENet / PSPNet
forks' BN (both versions share one message: caffe.proto's BNParameter; sources, facts only:
alexgkendall/caffe-segnet bn_layer.cpp, identical in caffe-segnet-cudnn5 and caffe-enet;
hszhao/PSPNet bn_layer.cpp), MVN and LRN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Layer, register


@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm: y = (x - mean) / sqrt(var + eps) per channel (axis 1), no affine
    part (a Scale layer follows it in Caffe nets).

    Blobs: [0] running mean sum, [1] running variance sum, [2] the scale factor s (1 value);
    the statistics are blob / s (0 when s == 0). With use_global_stats (default: true in
    TEST, false in TRAIN) the stored statistics are used and treated as constants;
    otherwise the batch's mean and biased variance are used, and every forward updates
    s = s * f + 1, blob0 = mean + f * blob0, blob1 = m/(m-1) var + f * blob1 with
    f = moving_average_fraction, m = count / channels. The blobs are never learnt:
    their ParamSpecs get lr_mult 0, and a non-zero lr_mult is an error (as in Caffe)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.batch_norm_param
        shape = bottom_shapes[0]
        self.fraction = float(p.moving_average_fraction)
        self.use_global = bool(p.use_global_stats) if p.HasField("use_global_stats") else self.phase == "TEST"
        self.eps = float(p.eps)
        channels = 1 if len(shape) == 1 else shape[1]
        if channels is None:
            raise self.error("the channel count must be known")
        from ..proto import caffe_pb2
        zero = caffe_pb2.FillerParameter(type="constant", value=0)
        for size in (channels, channels, 1):
            self.add_blob((size,), zero)
        param = type(self.param)()
        param.CopyFrom(self.param)
        for i in range(3):
            if i == len(param.param):
                param.param.add().lr_mult = 0.0
            elif param.param[i].lr_mult != 0:
                raise self.error("cannot configure batch normalization statistics as layer parameters "
                                 "(lr_mult must be 0)")
        self.param = param
        return list(bottom_shapes)

    def forward(self, x):
        nd = x.dim()
        view = (1, -1) + (1,) * (nd - 2) if nd > 1 else (-1,)
        dims = [0] + list(range(2, nd))
        if self.use_global:
            s = float(self.blobs[2].detach().reshape(-1)[0])
            factor = 0.0 if s == 0 else 1.0 / s
            mean = self.blobs[0].detach() * factor
            var = self.blobs[1].detach() * factor
        else:
            mean = x.mean(dim=dims)
            var = (x - mean.reshape(view)).pow(2).mean(dim=dims)
            with torch.no_grad():
                m = x.numel() // mean.numel()
                correction = m / (m - 1) if m > 1 else 1.0
                self.blobs[2].mul_(self.fraction).add_(1.0)
                self.blobs[0].mul_(self.fraction).add_(mean.detach().to(self.blobs[0].dtype))
                self.blobs[1].mul_(self.fraction).add_(var.detach().to(self.blobs[1].dtype), alpha=correction)
        return ((x - mean.reshape(view)) / torch.sqrt(var + self.eps).reshape(view),)

    def channel_affine(self):
        """(a, b) per channel with top = a x + b, when the stored statistics are used (a 4-D
        bottom with use_global_stats); None when the batch's are. For the planned forward's
        folding into a preceding convolution (caffe/inference.py)."""
        if not self.use_global or self.blobs[0].dim() != 1:
            return None
        s = float(self.blobs[2].detach().reshape(-1)[0])
        factor = 0.0 if s == 0 else 1.0 / s
        mean = self.blobs[0].detach().double() * factor
        var = self.blobs[1].detach().double() * factor
        a = 1.0 / torch.sqrt(var + self.eps)
        return a, -mean * a


class _MVNFn(torch.autograd.Function):
    """y = (x - mean) / (std + eps) over the last axis of a 2-D view, with Caffe's backward:
    dx = (g - mean(g) - y mean(g y)) / (std + eps)."""

    @staticmethod
    def forward(ctx, x, eps):
        centred = x - x.mean(1, keepdim=True)
        denom = centred.pow(2).mean(1, keepdim=True).sqrt() + eps
        y = centred / denom
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, g):
        y, denom = ctx.saved_tensors
        dx = g - g.mean(1, keepdim=True) - y * (g * y).mean(1, keepdim=True)
        return dx / denom, None


@register("MVN")
class MVN(Layer):
    """Mean-variance normalisation per item and channel (per item with across_channels):
    subtract the mean, and with normalize_variance (default) divide by std + eps (eps
    default 1e-9, added to the standard deviation as Caffe does)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.mvn_param
        self.across = bool(p.across_channels)
        self.normalize_variance = bool(p.normalize_variance)
        self.eps = float(p.eps)
        if len(bottom_shapes[0]) < 2 and not self.across:
            raise self.error(f"needs num and channels axes, got shape {bottom_shapes[0]}")
        return list(bottom_shapes)

    def forward(self, x):
        groups = x.shape[0] if self.across else x.shape[0] * x.shape[1]
        flat = x.reshape(groups, -1)
        if self.normalize_variance:
            y = _MVNFn.apply(flat, self.eps)
        else:
            y = flat - flat.mean(1, keepdim=True)
        return (y.reshape(x.shape),)


ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


@register("LRN")
class LRN(Layer):
    """Local response normalisation of a 4-D blob (local_size odd, default 5; alpha 1,
    beta 0.75, k 1). ACROSS_CHANNELS: y = x (k + alpha/n sum of x^2 over n neighbouring
    channels)^-beta. WITHIN_CHANNEL: y = x (1 + alpha * mean of x^2 over the n x n window,
    zero-padded)^-beta (Caffe's composition of Power, AVE Pooling and Power; k unused)."""

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise self.error("LRN only supports odd values for local_size")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = int(p.norm_region)
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"input must have 4 axes, corresponding to (num, channels, height, width); "
                             f"got {bottom_shapes[0]}")
        return list(bottom_shapes)

    def forward(self, x):
        if self.region == ACROSS_CHANNELS:
            return (F.local_response_norm(x, self.size, self.alpha, self.beta, self.k),)
        pad = (self.size - 1) // 2
        # stride 1, pad (n-1)/2: every window lies inside image + pad, so Caffe's AVE divisor is n*n.
        mean = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return (x * (1.0 + self.alpha * mean).pow(-self.beta),)


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

    def channel_affine(self):
        """(a, b) per channel with top = a x + b where the layer uses no batch statistics
        (SegNet's INFERENCE mode; PSPNet's in TEST or frozen); None otherwise. For the planned
        forward's folding into a preceding convolution (caffe/inference.py)."""
        scale, shift = (b.detach().double().reshape(-1) for b in self.blobs[:2])
        if self.pspnet:
            if not (self.frozen or self.phase == "TEST"):
                return None
            mean, var = (b.detach().double().reshape(-1) for b in self.blobs[2:4])
            a = scale / torch.sqrt(var + self.eps)
            return a, shift - mean * a
        if self.mode != INFERENCE:
            return None
        return scale, shift
