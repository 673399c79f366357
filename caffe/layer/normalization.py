"""Normalisation layers: BatchNorm (Caffe's three statistic blobs), MVN and LRN."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import Layer, register


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
