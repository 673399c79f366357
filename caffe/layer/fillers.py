"""Caffe's weight fillers (FillerParameter, filler.hpp's GetFiller): constant, gaussian (with
``sparse``), positive_unitball, uniform, xavier, msra (both with ``variance_norm``) and
bilinear (FCN's Deconvolution upsampling kernel)."""
from __future__ import annotations

import math

import torch

FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2   # FillerParameter.VarianceNorm
TYPES = ("constant", "gaussian", "positive_unitball", "uniform", "xavier", "msra", "bilinear")


def _fan_norm(t: torch.Tensor, filler) -> float:
    """Xavier/MSRA's n: fan_in = count / shape[0], fan_out = count / shape[1] (count for a 1-axis
    blob), or their average, as ``variance_norm`` says (filler.hpp)."""
    count = t.numel()
    fan_in = count // t.shape[0]
    fan_out = count // t.shape[1] if t.dim() > 1 else count
    mode = int(filler.variance_norm)
    if mode == AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_out if mode == FAN_OUT else fan_in)


def bilinear_kernel(size: int) -> torch.Tensor:
    """Caffe's BilinearFiller for a size x size kernel: f = ceil(size / 2), c = (size - 1) / (2f),
    w[y, x] = (1 - |x / f - c|) (1 - |y / f - c|)."""
    f = math.ceil(size / 2.0)
    c = (size - 1) / (2.0 * f)
    ramp = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return torch.outer(ramp, ramp)


@torch.no_grad()
def fill(t: torch.Tensor, filler, layer) -> None:
    """Fill ``t`` in place as Caffe's filler of that type would (same distributions and
    formulas); a type Caffe does not know, or a setting it refuses, is an error naming ``layer``."""
    kind = filler.type or "constant"
    if kind not in TYPES:
        raise layer.error(f"unknown filler type {kind!r} (Caffe's fillers: {', '.join(TYPES)})")
    sparse = int(filler.sparse)
    if kind != "gaussian" and sparse != -1:
        raise layer.error(f"filler {kind!r} does not support sparse (only gaussian does); got sparse: {sparse}")
    if sparse < -1:
        raise layer.error(f"gaussian filler's sparse must be >= -1, got {sparse}")
    if t.numel() == 0:
        raise layer.error(f"filler {kind!r} cannot fill an empty blob of shape {tuple(t.shape)}")
    if kind != "constant" and kind != "uniform" and t.dim() == 0:
        raise layer.error(f"filler {kind!r} needs a blob with at least one axis")
    if kind == "constant":
        t.fill_(filler.value)
    elif kind == "uniform":
        t.uniform_(filler.min, filler.max)
    elif kind == "gaussian":
        t.normal_(filler.mean, filler.std)
        if sparse >= 0:
            # Each weight stays non-zero with probability sparse / num_outputs (shape[0]).
            keep = min(1.0, sparse / t.shape[0])
            t.mul_(torch.bernoulli(torch.full_like(t, keep)))
    elif kind == "positive_unitball":
        # Uniform in [0, 1], then each of the shape[0] rows (count / shape[0] values) sums to 1.
        t.uniform_(0.0, 1.0)
        rows = t.view(t.shape[0], -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _fan_norm(t, filler))
        t.uniform_(-scale, scale)
    elif kind == "msra":
        t.normal_(0.0, math.sqrt(2.0 / _fan_norm(t, filler)))
    else:   # bilinear
        if t.dim() != 4:
            raise layer.error(f"filler 'bilinear' needs a 4-axis blob, got shape {tuple(t.shape)}")
        if t.shape[2] != t.shape[3]:
            raise layer.error(f"filler 'bilinear' needs a square kernel, got {t.shape[2]}x{t.shape[3]}")
        t.copy_(bilinear_kernel(t.shape[3]).to(t.dtype).expand_as(t))
