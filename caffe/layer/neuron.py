"""Neuron layers (Caffe's neuron_layers: one bottom, one top of the same shape, element-wise):
ReLU (leaky with negative_slope), Dropout, Sigmoid, TanH, AbsVal, Power, Exp, Log, BNLL,
Threshold, ELU, PReLU, Clip, Swish.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Layer, register


@register("ReLU")
class ReLU(Layer):
    """max(x, 0) + negative_slope * min(x, 0). Overwrites its bottom only when the Net says
    that is safe for this call (``self.in_place``: an in-place top, no gradient recorded, and
    no other blob or caller tensor shares the memory)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)
        return list(bottom_shapes)

    def forward(self, x):
        if self.slope:
            return (F.leaky_relu(x, self.slope, inplace=self.in_place),)
        return (F.relu(x, inplace=self.in_place),)


@register("Dropout")
class Dropout(Layer):
    """Caffe's dropout: in training, zero with probability ratio and scale by 1/(1-ratio).
    The SegNet forks' ``sample_weights_test`` (Bayesian SegNet's Monte Carlo dropout) drops
    and scales the same way in TEST too (their dropout_layer.cpp: ``phase_ == TRAIN ||
    sample_weights_test``); backward multiplies by the same mask and scale. ``scale_train:
    false`` (Intel's / NVIDIA's forks) moves the scaling to TEST: kept values pass unscaled in
    training and TEST multiplies by 1 - ratio."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.dropout_param
        self.ratio = float(p.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.sample_test = bool(p.sample_weights_test)
        self.scale_train = bool(p.scale_train)
        return list(bottom_shapes)

    def forward(self, x):
        sampling = self.training or self.sample_test
        y = F.dropout(x, self.ratio, sampling)
        if not self.scale_train and self.ratio:
            y = y * (1.0 - self.ratio)   # undoes F.dropout's 1/(1-ratio), or scales TEST's copy
        return (y,)


class _Neuron(Layer):
    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        return list(bottom_shapes)


def _caffe_grad(name, forward, derivative):
    """An autograd Function whose forward is ``forward(x)`` and whose backward is
    ``grad * derivative(x, y)`` -- Caffe's Backward_cpu for an element-wise layer."""
    def fwd(ctx, x):
        y = forward(x)
        ctx.save_for_backward(x, y)
        return y

    def bwd(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * derivative(x, y)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})


@register("Sigmoid")
class Sigmoid(_Neuron):
    """y = 1 / (1 + exp(-x)); dy/dx = y (1 - y)."""

    def forward(self, x):
        return (torch.sigmoid(x),)


@register("TanH")
class TanH(_Neuron):
    """y = tanh(x); dy/dx = 1 - y^2."""

    def forward(self, x):
        return (torch.tanh(x),)


@register("AbsVal")
class AbsVal(_Neuron):
    """y = |x|; dy/dx = sign(x), 0 at 0 (Caffe's caffe_cpu_sign, as autograd's abs)."""

    def setup(self, bottom_shapes):
        if self.param.top[0] == self.param.bottom[0]:
            raise self.error("AbsVal does not allow in-place computation")
        return list(bottom_shapes)

    def forward(self, x):
        return (torch.abs(x),)


class _PowerFn(torch.autograd.Function):
    """y = (shift + scale x)^power with Caffe's backward: diff_scale = power * scale; constant
    when diff_scale == 0 or power == 1; diff_scale (shift + scale x) when power == 2;
    power y / x when shift == 0; else diff_scale y / (shift + scale x)."""

    @staticmethod
    def forward(ctx, x, power, scale, shift):
        base = x * scale + shift if (scale != 1 or shift != 0) else x
        y = torch.full_like(x, 1.0 if power == 0 else shift ** power) if scale == 0 else base.pow(power)
        ctx.save_for_backward(x, y)
        ctx.args = (power, scale, shift)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        power, scale, shift = ctx.args
        diff_scale = power * scale
        if diff_scale == 0 or power == 1:
            d = torch.full_like(x, diff_scale)
        elif power == 2:
            d = x * (diff_scale * scale) + diff_scale * shift if shift != 0 else x * (diff_scale * scale)
        elif shift == 0:
            d = y / x * power
        else:
            d = y / (x * scale + shift) * diff_scale
        return grad * d, None, None, None


@register("Power")
class Power(_Neuron):
    """y = (shift + scale * x) ^ power (power_param, defaults 1, 1, 0)."""

    def setup(self, bottom_shapes):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        return list(bottom_shapes)

    def forward(self, x):
        return (_PowerFn.apply(x, self.power, self.scale, self.shift),)


def _base_log(layer, base):
    if base == -1:
        return 1.0
    if base <= 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base}")
    return math.log(base)


@register("Exp")
class Exp(_Neuron):
    """y = base ^ (shift + scale * x), base -1 meaning e."""

    def setup(self, bottom_shapes):
        p = self.param.exp_param
        self.inner = _base_log(self, p.base) * float(p.scale)
        self.outer = math.exp(_base_log(self, p.base) * float(p.shift))
        return list(bottom_shapes)

    def forward(self, x):
        y = torch.exp(x * self.inner) if self.inner != 1 else torch.exp(x)
        return (y * self.outer if self.outer != 1 else y,)


@register("Log")
class Log(_Neuron):
    """y = log_base(shift + scale * x), base -1 meaning e."""

    def setup(self, bottom_shapes):
        p = self.param.log_param
        self.base_scale = 1.0 / _base_log(self, p.base)   # Caffe multiplies by 1 / ln(base)
        self.scale, self.shift = float(p.scale), float(p.shift)
        return list(bottom_shapes)

    def forward(self, x):
        if self.scale != 1 or self.shift != 0:
            x = x * self.scale + self.shift
        y = torch.log(x)
        return (y * self.base_scale if self.base_scale != 1 else y,)


_BNLL_THRESHOLD = 50.0
_BNLLFn = _caffe_grad(
    "_BNLLFn",
    # y = x + log(1 + exp(-x)) for x > 0, log(1 + exp(x)) otherwise
    lambda x: torch.where(x > 0, x + torch.log1p(torch.exp(-x.abs())), torch.log1p(torch.exp(-x.abs()))),
    # Caffe: e = exp(min(x, 50)); dy/dx = e / (e + 1)
    lambda x, y: (lambda e: e / (e + 1))(torch.exp(torch.clamp(x, max=_BNLL_THRESHOLD))))


@register("BNLL")
class BNLL(_Neuron):
    """Binomial normal log likelihood: y = log(1 + exp(x)), computed stably."""

    def forward(self, x):
        return (_BNLLFn.apply(x),)


@register("Threshold")
class Threshold(_Neuron):
    """y = 1 if x > threshold else 0. Caffe has no backward for it; here no gradient flows."""

    no_gradient_to = {"*": "Threshold has no backward"}

    def setup(self, bottom_shapes):
        self.threshold = float(self.param.threshold_param.threshold)
        return list(bottom_shapes)

    def forward(self, x):
        return ((x.detach() > self.threshold).to(x.dtype),)


@register("ELU")
class ELU(_Neuron):
    """y = x if x > 0 else alpha (exp(x) - 1); dy/dx = 1 if x > 0 else y + alpha."""

    def setup(self, bottom_shapes):
        alpha = float(self.param.elu_param.alpha)
        self.fn = _caffe_grad(
            "_ELUFn",
            lambda x: torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0))),
            lambda x, y: torch.where(x > 0, torch.ones_like(x), y + alpha))
        return list(bottom_shapes)

    def forward(self, x):
        return (self.fn.apply(x),)


@register("PReLU")
class PReLU(_Neuron):
    """y = max(x, 0) + a_c min(x, 0) with a learnable slope per channel (axis 1) or one
    shared slope (``channel_shared``, a 0-axis blob); filler default constant 0.25.
    dy/dx = 1 for x > 0, a_c for x <= 0; da_c = sum x for x <= 0 (Caffe's)."""

    def setup(self, bottom_shapes):
        p = self.param.prelu_param
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise self.error(f"needs a bottom of at least 2 axes, got shape {shape}")
        self.shared = bool(p.channel_shared)
        if p.HasField("filler"):
            filler = p.filler
        else:
            from ..proto import caffe_pb2
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        if not self.shared and shape[1] is None:
            raise self.error("the channel count must be known")
        self.add_blob(() if self.shared else (shape[1],), filler)
        return list(bottom_shapes)

    def forward(self, x):
        # torch's prelu is Caffe's in both directions: its backward takes the slope for x <= 0
        # (dx = a dy there, da = sum x dy over x <= 0), as prelu_layer.cpp's Backward_cpu.
        a = self.blobs[0].reshape(1) if self.shared else self.blobs[0]
        return (torch.nn.functional.prelu(x, a.to(x.dtype)),)


@register("Clip")
class Clip(_Neuron):
    """y = max(min, min(max, x)); gradient 1 where min <= x <= max (bounds included), else 0."""

    def setup(self, bottom_shapes):
        p = self.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("clip_param needs both min and max")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.error(f"min {self.lo} must not exceed max {self.hi}")
        return list(bottom_shapes)

    def forward(self, x):
        return (torch.clamp(x, self.lo, self.hi),)


@register("Swish")
class Swish(_Neuron):
    """y = x sigmoid(beta x) (swish_param.beta, default 1)."""

    def setup(self, bottom_shapes):
        self.beta = float(self.param.swish_param.beta)
        return list(bottom_shapes)

    def forward(self, x):
        return (x * torch.sigmoid(x * self.beta),)
