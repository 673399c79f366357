"""Layers whose tops are fed from outside the graph: Input, the fork's ImageSegData and
BVLC's Data, ImageData, HDF5Data, WindowData and MemoryData.

Loading data is the data pipeline's job (caffe/imageseg.py, caffe/datasources.py); in the graph
the layer only declares its tops' shapes, which the Net exposes as inputs.
"""
from __future__ import annotations

from . import Layer, register


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
    """A BVLC data layer whose batches a source of caffe.datasources reads; at build, as
    Caffe's DataLayerSetUp, the source is opened and its first item sizes the tops."""

    is_data = True
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def setup(self, bottom_shapes):
        from ..datasources import make_source
        return make_source(self, self.phase).top_shapes()


@register("Data")
class Data(_SourceLayer):
    """Datum records of an LMDB / LevelDB (caffe.datum_db): data N x C x H x W (the first
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
    """R-CNN windows warped to crop_size (caffe.window_data): data N x 3 x crop x crop, label N."""


@register("MemoryData")
class MemoryData(Layer):
    """Arrays handed over by pycaffe's ``Net.set_input_arrays``, batch_size items per forward
    (caffe.pycaffe_batch): data N x channels x height x width, label N."""

    is_data = True
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def setup(self, bottom_shapes):
        p = self.param.memory_data_param
        shape = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(shape) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive "
                             f"in memory_data_param (got {'x'.join(map(str, shape))})")
        return [shape, shape[:1]]
