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
    num_bottoms = (0,)
    num_tops = None

    def setup(self, bottom_shapes):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        n = len(self.param.top)
        if len(shapes) == 1:
            return shapes * n
        if len(shapes) != n:
            raise self.error(f"input_param has {len(shapes)} shapes for {n} tops; give 1 or {n}")
        return shapes


@register("ImageSegData")
class ImageSegData(Layer):
    """The DeepLab fork's image + segmentation label source: tops data, label (, data_dim).

    data is N x 3 x crop x crop (BGR minus mean), label N x 1 x crop x crop, and the optional
    third top holds each image's (height, width) as N x 1 x 1 x 2.
    """

    is_data = True
    num_bottoms = (0,)
    num_tops = (1, 2, 3)

    def setup(self, bottom_shapes):
        p = self.param.image_data_param
        n = int(p.batch_size) or 1
        crop = int(self.param.transform_param.crop_size) or None
        shapes = [(n, 3, crop, crop), (n, 1, crop, crop), (n, 1, 1, 2)]
        return shapes[: len(self.param.top)]
