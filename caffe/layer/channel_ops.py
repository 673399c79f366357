"""The DeepLab fork's channel layers: ChannelAggregator (log-sum-exp of channel groups),
GainChannel (a learnable per-channel gain) and RelativeError (a metric), as its
src/caffe/layers/*.cpp compute them."""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import Layer, register


def read_label_map(layer: Layer, path: str) -> list[list[int]]:
    """ChannelAggregator's label_map_file: one output channel per line, listing the input
    channels (whitespace-separated integers) it aggregates; an empty line is an error."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise layer.error(f"channel_aggregator_param.label_map_file: cannot read {path}: {e.strerror}") from None
    groups = []
    for k, line in enumerate(lines, 1):
        try:
            ints = [int(tok) for tok in line.split()]
        except ValueError:
            raise layer.error(f"{path}:{k}: expected integers (input channels), got {line.strip()!r}") from None
        if not ints:
            raise layer.error(f"{path}:{k}: empty line (every line lists the input channels of one output)")
        groups.append(ints)
    if not groups:
        raise layer.error(f"{path}: the label map cannot be empty")
    return groups


@register("ChannelAggregator")
class ChannelAggregator(Layer):
    """Output channel k is log(sum over the input channels of line k of label_map_file of
    exp(x)), computed with the maximum subtracted; its gradient is the softmax over the
    group (a channel listed twice counts twice, as in the fork)."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.channel_aggregator_param
        if not p.HasField("label_map_file"):
            raise self.error("channel_aggregator_param.label_map_file is required")
        self.groups = read_label_map(self, p.label_map_file)
        n, c, h, w = bottom_shapes[0]
        if c is not None:
            for k, group in enumerate(self.groups, 1):
                bad = [g for g in group if not 0 <= g < c]
                if bad:
                    raise self.error(f"{p.label_map_file}:{k}: input channel {bad[0]} out of range "
                                     f"(the input has {c} channels)")
        return [(n, len(self.groups), h, w)]

    def forward(self, x):
        return (torch.cat([torch.logsumexp(x[:, g], dim=1, keepdim=True) for g in self.groups], dim=1),)


class _Gain(torch.autograd.Function):
    """y = x * gain per channel; the gain's gradient gets the fork's drift, noise and
    zero-mean steps (GainChannelLayer::Backward_cpu)."""

    @staticmethod
    def forward(ctx, x, gain, layer):
        ctx.save_for_backward(x, gain)
        ctx.layer = layer
        return x * gain.reshape(1, -1, *([1] * (x.dim() - 2)))

    @staticmethod
    def backward(ctx, g):
        x, gain = ctx.saved_tensors
        layer = ctx.layer
        shape = (1, -1) + (1,) * (x.dim() - 2)
        grad_x = g * gain.reshape(shape) if ctx.needs_input_grad[0] else None
        dims = [0] + list(range(2, x.dim()))
        diff = (g * x).sum(dim=dims)
        flat = gain.reshape(-1)
        if layer.drift > 0:
            k = layer.num_output_nz
            thresh = torch.sort(flat, descending=True).values[k - 1]
            diff = diff + layer.drift * (flat < thresh).to(diff.dtype)
        if layer.stdev > 0:
            diff = diff + layer.stdev * torch.randn(diff.shape, dtype=diff.dtype).to(diff.device)
        if layer.norm_mean:
            diff = diff - diff.mean()
        return grad_x, diff.reshape(gain.shape), None


@register("GainChannel")
class GainChannel(Layer):
    """Multiplies each channel by a learnable gain (blob 1 x C x 1 x 1, from gain_filler).
    Each forward first projects the gains: values below ``thresh`` become ``thresh`` and,
    with norm_mean, the gains are scaled to mean 1 (all 1 if their sum is not positive);
    the projection is written back to the blob, as the fork's Forward does. The gains'
    gradient is sum(top diff * x) per channel, plus ``drift`` for the gains below the
    num_output_nz-th largest, plus N(0, stdev) noise, made zero-mean with norm_mean."""

    exact_num_bottom_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.gain_channel_param
        c = bottom_shapes[0][1]
        if c is None:
            raise self.error("the number of channels must be known")
        self.num_output_nz = int(p.num_output_nz)
        self.drift, self.stdev, self.thresh = float(p.drift), float(p.stdev), float(p.thresh)
        self.norm_mean = bool(p.norm_mean)
        if not 0 < self.num_output_nz <= c:
            raise self.error(f"num_output_nz must be in 1..{c} (the channels), got {self.num_output_nz}")
        if self.drift < 0:
            raise self.error(f"drift needs to be non-negative, got {self.drift}")
        if self.stdev < 0:
            raise self.error(f"noise stdev needs to be non-negative, got {self.stdev}")
        if self.thresh <= 0:
            raise self.error(f"gain threshold needs to be positive, got {self.thresh}")
        if not p.HasField("gain_filler"):
            raise self.error("need to specify the gain filler (typically constant 1)")
        self.add_blob((1, c, 1, 1), p.gain_filler)
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        gain = self.blobs[0]
        with torch.no_grad():
            g = torch.clamp(gain.data, min=np.float32(self.thresh).item())
            if self.norm_mean:
                total = g.sum()
                g = (g.shape[1] / total) * g if total > 0 else torch.ones_like(g)
            gain.data.copy_(g)
        return (_Gain.apply(x, gain, self),)


@register("RelativeError")
class RelativeError(Layer):
    """sqrt(|a - b|^2 / max(|b|^2, 1e-6 * count)) over the whole blobs, as a 1 x 1 x 1 x 1
    top (the fork scales both sums by 1/count before comparing with 1e-6). No backward."""

    exact_num_bottom_blobs = 2
    no_gradient_to = {"*": "RelativeError has no backward"}

    def setup(self, bottom_shapes):
        a, b = bottom_shapes
        for x, y in zip(a, b):
            if None not in (x, y) and x != y:
                raise self.error(f"bottoms must have the same shape, got {tuple(a)} and {tuple(b)}")
        return [(1, 1, 1, 1)]

    @torch.no_grad()
    def forward(self, a, b):
        alpha = np.float32(1 / math.sqrt(a.numel()))
        d = (a - b).float() * alpha
        nom = (d * d).sum()
        s = b.float() * alpha
        denom = torch.clamp((s * s).sum(), min=np.float32(1e-6).item())
        return (torch.sqrt(nom / denom).reshape(1, 1, 1, 1).to(a.dtype),)
