"""pycaffe's ``caffe.Classifier``: a TEST net, a Transformer and ten-crop prediction."""
from __future__ import annotations

import numpy as np

from . import TEST
from . import io as caffe_io
from .io import Transformer, resize_image
from .pycaffe import Net


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=, mean=, input_scale=, raw_scale=,
    channel_swap=)``: images (H x W x K, RGB in [0, 1] as caffe.io.load_image gives) in,
    the net's output probabilities out. The DeepLab fork's form, with ``gpu`` after
    ``image_dims`` (positional or keyword), is accepted with a deprecation line: the net is
    built as the fork's Net(model, weights), the process-wide phase becomes TEST and a K x H x W
    mean of another size is resized, as the fork's Classifier does."""

    def __init__(self, model_file, pretrained_file, image_dims=None, *args, **kwargs):
        from ._caffe.legacy import fork_setup, split_args
        values, legacy = split_args(args, kwargs, ("gpu", "mean", "input_scale", "raw_scale", "channel_swap"),
                                    ("mean", "input_scale", "raw_scale", "channel_swap"), "Classifier")
        mean, input_scale = values.get("mean"), values.get("input_scale")
        raw_scale, channel_swap = values.get("raw_scale"), values.get("channel_swap")
        if legacy:
            super().__init__(model_file, pretrained_file)
            mean = fork_setup(self, values.get("gpu"), mean)
        else:
            super().__init__(model_file, TEST, weights=pretrained_file)
        name = self.inputs[0]
        self.transformer = Transformer({name: self.blobs[name].data.shape})
        self.transformer.set_transpose(name, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(name, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(name, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(name, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(name, channel_swap)
        self.crop_dims = np.array(self.blobs[name].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """N x classes predictions: ten crops averaged (``oversample``) or the centre crop."""
        use_ten = oversample
        images = np.stack([resize_image(im, self.image_dims) for im in inputs])
        if use_ten:
            crops = caffe_io.oversample(images, self.crop_dims)
        else:
            top = ((self.image_dims - self.crop_dims) / 2.0).astype(int)
            crops = images[:, top[0]:top[0] + self.crop_dims[0], top[1]:top[1] + self.crop_dims[1], :]
        name = self.inputs[0]
        data = np.stack([self.transformer.preprocess(name, c) for c in crops])
        out = self.forward_all(**{name: data})[self.outputs[0]]
        if use_ten:
            out = out.reshape((len(out) // 10, 10, -1)).mean(1)
        return out
