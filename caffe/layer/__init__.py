"""Caffe layers as small torch modules, looked up by Caffe type name.

Like Caffe's layer registry: each layer class registers under its type string (and the
old V1 enum name, which the prototxt upgrade maps to the same string). A layer is built
from its ``LayerParameter`` and its bottoms' shapes; ``top_shapes`` is known before any
data flows (that is what ``tools/netinfo.py`` prints). ``forward`` takes bottom tensors
and returns a tuple of top tensors.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import CaffeError

Shape = tuple  # (N, C, H, W) or shorter; entries may be None where unknown

REGISTRY: dict[str, type["Layer"]] = {}


def register(*type_names: str):
    """Class decorator: register a layer class under its Caffe type name(s)."""
    def wrap(cls):
        for name in type_names:
            REGISTRY[name] = cls
        cls.type_names = type_names
        return cls
    return wrap


class Layer(nn.Module):
    """One Caffe layer. Subclasses implement ``setup`` (validate parameters, create blobs,
    return top shapes) and ``forward``. ``blobs`` holds the learnable Caffe blobs in
    Caffe's order (weight, bias)."""

    is_data = False      # tops are fed from outside the graph (Input, ImageSegData)
    is_loss = False      # first top gets loss_weight 1 unless the prototxt says otherwise
    num_bottoms: Sequence[int] | None = None   # allowed bottom counts (None: any)
    num_tops: Sequence[int] | None = (1,)

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: str = "TEST"):
        super().__init__()
        self.name = param.name
        self.type = param.type
        self.param = param
        self.phase = phase
        self.blobs = nn.ParameterList()
        if self.num_bottoms is not None and len(param.bottom) not in self.num_bottoms:
            raise self.error(f"takes {' or '.join(map(str, self.num_bottoms))} bottom(s), got {len(param.bottom)}")
        if self.num_tops is not None and len(param.top) not in self.num_tops:
            raise self.error(f"takes {' or '.join(map(str, self.num_tops))} top(s), got {len(param.top)}")
        self.top_shapes = [tuple(s) for s in self.setup([tuple(s) for s in bottom_shapes])]

    def error(self, message: str) -> CaffeError:
        """A user error naming this layer."""
        return CaffeError(f"layer {self.name!r} ({self.type}): {message}")

    def setup(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return list(bottom_shapes)

    def add_blob(self, shape: Sequence[int], filler) -> None:
        """Create a learnable blob of ``shape`` filled by a Caffe FillerParameter."""
        from .fillers import fill
        data = torch.empty(tuple(int(s) for s in shape))
        fill(data, filler, self)
        self.blobs.append(nn.Parameter(data))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, type={self.type!r}"


def make_layer(param, bottom_shapes: Sequence[Shape], phase: str) -> Layer:
    """Build the registered layer for ``param.type``; an unknown type is a user error."""
    cls = REGISTRY.get(param.type)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise CaffeError(f"layer {param.name!r}: unknown layer type {param.type!r} (supported: {known})")
    return cls(param, bottom_shapes, phase)


def spatial(values, single, h, w, default, what, layer):
    """Caffe's ``kernel_size`` / ``kernel_h``+``kernel_w`` convention -> (h, w)."""
    if h is not None or w is not None:
        if values:
            raise layer.error(f"{what} is {what}_size OR {what}_h and {what}_w; not both")
        if h is None or w is None:
            raise layer.error(f"for non-square {what}s both {what}_h and {what}_w are required")
        return int(h), int(w)
    values = list(values) if single is None else [single]
    if not values:
        if default is None:
            raise layer.error(f"{what} size is required")
        return default, default
    if len(values) == 1:
        return int(values[0]), int(values[0])
    if len(values) == 2:
        return int(values[0]), int(values[1])
    raise layer.error(f"{what} takes 1 or 2 values for 2-D blobs, got {len(values)}")


# Import the layer families so they register themselves.
from . import data, conv, neuron, pooling, interp, combine, loss, output  # noqa: E402,F401
