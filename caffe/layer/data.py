"""Layers whose tops come from outside the graph or from nothing: Input, the fork's ImageSegData,
BVLC's Data, ImageData, HDF5Data, WindowData and MemoryData, SegNet's DenseImageData (their
sources: caffe.data), and DummyData (filled blobs) and Parameter (a learnable blob as a top).
"""
from __future__ import annotations

import torch

from .base import Layer, register


@register("Input")
class Input(Layer):
    """Tops with shapes from ``input_param { shape {...} }`` (one shape for all, or one per top)."""

    is_data = True
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = -1
    min_top_blobs = 1

    def setup(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        n = self.top_count
        if len(shapes) == 1:
            return shapes * n
        if len(shapes) != n:
            raise self.error(f"input_param has {len(shapes)} shapes for {n} tops; give 1 or {n}")
        return shapes


@register("ImageSegData")
class ImageSegData(Layer):
    """The DeepLab fork's image + segmentation label source: tops data, label (, data_dim).

    data is N x C x H x W (BGR minus mean; C is 1 with ``is_color: false``), label N x 1 x H x W,
    and the third top holds each image's (height, width) as N x 1 x 1 x 2; H x W is the crop,
    else new_height x new_width, else unknown (each image's own size). As in the fork
    (ExactNumTopBlobs 3, AutoTopBlobs), tops the prototxt does not name are anonymous.
    """

    is_data = True
    label_tops = (1,)
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 3
    auto_top_blobs = True

    def setup(self, bottom_shapes):
        p = self.param.image_data_param
        n = int(p.batch_size) or 1
        c = 3 if p.is_color else 1
        crop = int(self.param.transform_param.crop_size)
        if crop:
            h = w = crop
        elif p.new_height and p.new_width:
            h, w = int(p.new_height), int(p.new_width)
        else:
            h = w = None
        return [(n, c, h, w), (n, 1, h, w), (n, 1, 1, 2)]


class _SourceLayer(Layer):
    """A BVLC data layer whose batches a source of caffe.data.sources reads; at build, as
    Caffe's DataLayerSetUp, the source is opened and its first item sizes the tops."""

    is_data = True
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def setup(self, bottom_shapes):
        from ..data import layer_source
        return layer_source(self, self.phase).top_shapes()


@register("Data")
class Data(_SourceLayer):
    """Datum records of an LMDB / LevelDB (caffe.util.db): data N x C x H x W (the first
    record's size after transform_param), and label N when a second top is named."""

    exact_num_top_blobs = -1
    min_top_blobs, max_top_blobs = 1, 2


@register("ImageData")
class ImageData(_SourceLayer):
    """Images of a ``path label`` list: data N x C x H x W (the first image's size after
    new_height/new_width and transform_param), label N."""


@register("HDF5Data")
class HDF5Data(_SourceLayer):
    """Rows of the datasets named as its tops in the listed HDF5 files: top i is
    batch_size x (dataset i's row shape)."""

    exact_num_top_blobs = -1
    min_top_blobs = 1


@register("WindowData")
class WindowData(_SourceLayer):
    """R-CNN windows warped to crop_size (caffe.data.window_data): data N x 3 x crop x crop, label N."""


@register("MemoryData")
class MemoryData(Layer):
    """Arrays handed over by pycaffe's ``Net.set_input_arrays``, batch_size items per forward
    (caffe._caffe.batch): data N x channels x height x width, label N. BVLC Caffe and both
    DeepLab forks give it exactly these 2 tops; the DeepLab v2 rewrite of
    yilei0620/DeepLab-V2-Read-Memory-Data (ExactNumTopBlobs 3, for the CRF layer) adds a
    third, data_dim N x 1 x 1 x 2 (each image's height, width), also accepted here."""

    is_data = True
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = -1
    min_top_blobs, max_top_blobs = 2, 3

    def setup(self, bottom_shapes):
        p = self.param.memory_data_param
        shape = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(shape) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive "
                             f"in memory_data_param (got {'x'.join(map(str, shape))})")
        return [shape, shape[:1], (shape[0], 1, 1, 2)][:self.top_count]


@register("DenseImageData")
class DenseImageData(_SourceLayer):
    """SegNet's image + label-image source (caffe.data.dense_image_data): data N x C x H x W,
    label N x 1 x H x W (H x W: crop_height x crop_width, else new_height x new_width, else
    the first image's; the label's divided by label_divide_factor)."""

    label_tops = (1,)


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
