"""Layers whose tops are fed from outside the graph: Input and the fork's ImageSegData.

Loading images for ImageSegData is the data pipeline's job (caffe/imageseg.py); in the graph
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
