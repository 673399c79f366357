"""The forward without gradients (TEST, extraction), planned once per set of kept blobs.

``caffe.net.Net.forward`` comes here when autograd is off. The plan, made on the first call
for a set of requested blobs and reused, lists per layer its bottoms, its tops, the blobs no
later layer reads (dropped after it: only what is asked for stays alive), whether its top 0
is Caffe's in-place top, and the memory layout it runs in. Measured on this project's 2-core
CPU (bench/bench_peers.py, ``--profile``): the Python bookkeeping between layers costs a few
microseconds a layer; what made small nets slow was the layout. PyTorch's CPU max pooling
on NCHW tensors is 5-10x slower than on channels_last ones (and mkldnn's convolutions take
channels_last without a reorder), so on the CPU a 4-D float blob entering a convolution,
pooling or element-wise layer is kept channels_last (``CHANNELS_LAST_TYPES``); any other
layer (Interp, Softmax, Python, MatWrite...) receives the usual contiguous NCHW tensor, and
every returned blob is contiguous NCHW, as Caffe's blobs are. The values are Caffe's either
way (the layout changes only the order of float additions inside a convolution).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import CaffeError

# Layers whose torch ops are at least as fast on channels_last tensors and never view them
# as NCHW memory: they receive channels_last bottoms on the CPU.
CHANNELS_LAST_TYPES = frozenset({
    "Convolution", "Deconvolution", "Pooling", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal",
    "Power", "Exp", "Clip", "Swish", "Dropout", "BatchNorm", "BN", "Scale", "Bias", "Eltwise", "Concat",
})
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Step:
    """One layer of the plan."""

    index: int
    layer: object
    bottoms: tuple
    tops: tuple
    free: tuple          # blobs read for the last time here, dropped after the layer
    in_place: bool       # Caffe's in-place top: top 0 is bottom 0 by name
    channels_last: bool  # runs on channels_last 4-D bottoms (CPU)


def plan(net, keep: frozenset, keep_all: bool) -> list[Step]:
    """The steps of a forward of ``net`` that keeps the blobs in ``keep`` (every blob with
    ``keep_all``)."""
    last: dict[str, int] = {}
    for i, layer in enumerate(net.layers):
        for b in layer.bottom_names:
            last[b] = i
    free: dict[int, list[str]] = {}
    if not keep_all:
        for b, i in last.items():
            if b not in keep:
                free.setdefault(i, []).append(b)
    steps = []
    for i, layer in enumerate(net.layers):
        if layer.is_data:
            continue
        bottoms, tops = tuple(layer.bottom_names), tuple(layer.top_names)
        conv_like = layer.type in CHANNELS_LAST_TYPES and getattr(layer, "axis", 1) == 1
        steps.append(Step(i, layer, bottoms, tops, tuple(free.get(i, ())),
                          bool(tops and bottoms and tops[0] == bottoms[0]), conv_like))
    return steps


def _wants_channels_last(x) -> bool:
    return (torch.is_tensor(x) and x.dim() == 4 and x.device.type == "cpu" and x.dtype in _FLOATS
            and not x.is_contiguous(memory_format=torch.channels_last))


def _is_channels_last_only(x) -> bool:
    return (torch.is_tensor(x) and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def run(net, steps: list[Step], blobs: dict, caller: set, channels_last: bool) -> dict:
    """Run ``steps`` on ``blobs`` (the inputs, by name; modified and returned). ``caller``:
    the memory of the caller's tensors, never overwritten in place."""
    may_overwrite = net._may_overwrite
    for step in steps:
        layer = step.layer
        try:
            bottoms = [blobs[b] for b in step.bottoms]
        except KeyError as e:
            raise CaffeError(f"layer {layer.name!r}: input blob {e.args[0]!r} was not given") from None
        if channels_last:
            convert = _wants_channels_last if step.channels_last else _is_channels_last_only
            fmt = torch.channels_last if step.channels_last else torch.contiguous_format
            for k, (name, x) in enumerate(zip(step.bottoms, bottoms)):
                if convert(x):
                    bottoms[k] = blobs[name] = x.contiguous(memory_format=fmt)   # later readers reuse it
        tops = layer.run(bottoms, in_place=step.in_place and may_overwrite(layer, bottoms, blobs, caller))
        for t, v in zip(step.tops, tops):
            blobs[t] = v
        for b in step.free:
            blobs.pop(b, None)
    return blobs


def nchw(blobs: dict) -> dict:
    """The blobs with any channels_last tensor made contiguous NCHW (as Caffe's blobs)."""
    return {k: v.contiguous() if _is_channels_last_only(v) else v for k, v in blobs.items()}
