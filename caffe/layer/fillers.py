"""Caffe's weight fillers (FillerParameter): constant, gaussian, uniform, xavier, msra."""
from __future__ import annotations

import math

import torch


def _fans(t: torch.Tensor) -> tuple[float, float]:
    # Caffe: fan_in = count / shape[0], fan_out = count / shape[1].
    count = t.numel()
    fan_in = count / t.shape[0]
    fan_out = count / t.shape[1] if t.dim() > 1 else count
    return fan_in, fan_out


def _norm(t: torch.Tensor, filler) -> float:
    fan_in, fan_out = _fans(t)
    mode = filler.variance_norm  # 0 FAN_IN, 1 FAN_OUT, 2 AVERAGE
    return {0: fan_in, 1: fan_out, 2: (fan_in + fan_out) / 2.0}[mode]


@torch.no_grad()
def fill(t: torch.Tensor, filler, layer) -> None:
    """Fill ``t`` in place as Caffe's filler of that type would (same distributions)."""
    kind = filler.type or "constant"
    if kind == "constant":
        t.fill_(filler.value)
    elif kind == "gaussian":
        t.normal_(filler.mean, filler.std)
        if filler.sparse >= 0:
            # Caffe: each weight is non-zero with probability sparse / num_outputs.
            keep = min(1.0, filler.sparse / t.shape[0])
            t.mul_(torch.bernoulli(torch.full_like(t, keep)))
    elif kind == "uniform":
        t.uniform_(filler.min, filler.max)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _norm(t, filler))
        t.uniform_(-scale, scale)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / _norm(t, filler)))
    else:
        raise layer.error(f"filler type {kind!r} is not supported (constant, gaussian, uniform, xavier, msra)")
