"""Layers without bottoms that make their own tops: DummyData (filled blobs) and
Parameter (a learnable blob as a top)."""
from __future__ import annotations

import torch

from . import Layer, register


@register("DummyData")
class DummyData(Layer):
    """Tops of the given shapes, filled by ``data_filler`` (none: constant 0; one: for all
    tops; else one per top). Shapes come from ``shape`` (once, or once per top) or the legacy
    num/channels/height/width (each once, or once per top), never both. As in Caffe, tops
    with a constant filler are filled once; the others are refilled on every forward."""

    exact_num_bottom_blobs = 0
    exact_num_top_blobs, min_top_blobs = -1, 1

    def setup(self, bottom_shapes):
        from ..proto import caffe_pb2
        p = self.param.dummy_data_param
        n = self.top_count
        if n < 1:
            raise self.error("needs at least one top")
        if len(p.data_filler) not in (0, 1, n):
            raise self.error(f"number of data fillers must be 0, 1 or equal to the number of tops: "
                             f"{n}; you specified {len(p.data_filler)} data fillers")
        legacy = {f: [int(v) for v in getattr(p, f)] for f in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(p.shape):
                raise self.error("both shape and legacy fields (num, channels, height, width) were specified")
            for f, values in legacy.items():
                if len(values) not in (1, n):
                    raise self.error(f"must specify {f!r} once, or once per top blob ({n}); specified {len(values)}")
            shapes = [tuple(v[0] if len(v) == 1 else v[i] for v in legacy.values()) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):
                raise self.error(f"must specify 'shape' once, or once per top blob ({n}); specified {len(p.shape)}")
            shapes = [tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        if any(d < 0 for s in shapes for d in s):
            raise self.error(f"dims must be non-negative, got {shapes}")
        if len(p.data_filler):
            self.fillers = [p.data_filler[0 if len(p.data_filler) == 1 else i] for i in range(n)]
        else:
            self.fillers = [caffe_pb2.FillerParameter(type="constant", value=0)] * n
        self.refill = [(f.type or "constant") != "constant" for f in self.fillers]
        self.register_buffer("_device", torch.zeros(()), persistent=False)
        for i, (shape, filler) in enumerate(zip(shapes, self.fillers)):
            if not self.refill[i]:
                self.register_buffer(f"_top{i}", self._fill(shape, filler), persistent=False)
        return shapes

    def _fill(self, shape, filler, like: torch.Tensor | None = None) -> torch.Tensor:
        from .fillers import fill
        data = torch.empty(shape) if like is None else torch.empty(shape, dtype=like.dtype, device=like.device)
        fill(data, filler, self)
        return data

    def forward(self):
        tops = []
        for i, (shape, filler) in enumerate(zip(self.top_shapes, self.fillers)):
            if self.refill[i]:
                tops.append(self._fill(shape, filler, self._device))
            else:
                # A copy, so that an in-place layer downstream cannot change the next batch.
                tops.append(getattr(self, f"_top{i}").clone())
        return tuple(tops)


@register("Parameter")
class Parameter(Layer):
    """Its one learnable blob (``parameter_param.shape``, zero-initialised as in Caffe) is its top."""

    exact_num_bottom_blobs = 0

    def setup(self, bottom_shapes):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        from ..proto import caffe_pb2
        self.add_blob(shape, caffe_pb2.FillerParameter(type="constant", value=0))
        return [shape]

    def forward(self):
        return (self.blobs[0],)   # shares the blob's data, as Caffe's ShareData
