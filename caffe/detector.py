"""pycaffe's ``caffe.Detector``: a TEST net scoring image windows (R-CNN style), each window
cropped with optional context padding and warped to the net's input size."""
from __future__ import annotations

import numpy as np

from . import TEST
from .io import Transformer, load_image, resize_image
from .pycaffe import Net


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=, input_scale=, raw_scale=, channel_swap=,
    context_pad=)``; ``detect_windows([(image_path, [(ymin, xmin, ymax, xmax), ...]), ...])``.
    The DeepLab fork's form, with ``gpu`` after the weights, is accepted as Classifier's."""

    def __init__(self, model_file, pretrained_file, *args, **kwargs):
        from ._caffe.legacy import fork_setup, split_args
        values, legacy = split_args(args, kwargs,
                                    ("gpu", "mean", "input_scale", "raw_scale", "channel_swap", "context_pad"),
                                    ("mean", "input_scale", "raw_scale", "channel_swap", "context_pad"), "Detector")
        mean, input_scale = values.get("mean"), values.get("input_scale")
        raw_scale, channel_swap = values.get("raw_scale"), values.get("channel_swap")
        context_pad = values.get("context_pad")
        if legacy:
            super().__init__(model_file, pretrained_file)
            mean = fork_setup(self, values.get("gpu"), mean)
        else:
            super().__init__(model_file, TEST, weights=pretrained_file)
        name = self.inputs[0]
        self.transformer = Transformer({name: self.blobs[name].data.shape})
        self.transformer.set_transpose(name, (2, 0, 1))
        for setter, value in ((self.transformer.set_mean, mean), (self.transformer.set_input_scale, input_scale),
                              (self.transformer.set_raw_scale, raw_scale),
                              (self.transformer.set_channel_swap, channel_swap)):
            if value is not None:
                setter(name, value)
        self.configure_crop(context_pad)

    def configure_crop(self, context_pad) -> None:
        """Pad each window by ``context_pad`` pixels of context (in the warped crop's scale);
        the padding outside the image is filled with the mean."""
        name = self.inputs[0]
        self.context_pad = context_pad
        self.crop_mean = None
        if context_pad:
            mean = self.transformer.mean.get(name)
            if mean is not None:
                raw = self.transformer.raw_scale.get(name, 1.0)
                swap = self.transformer.channel_swap.get(name)
                m = mean / raw
                if swap is not None:
                    m = m[np.argsort(swap)]
                m = m.transpose(1, 2, 0)
                crop = self.blobs[name].data.shape[2:]
                self.crop_mean = m if m.shape[:2] == crop else np.broadcast_to(m, crop + (m.shape[2],)).copy()

    def crop(self, im, window) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of ``im``, with context padding when configured."""
        y0, x0, y1, x1 = (int(v) for v in window)
        if not self.context_pad:
            return im[y0:y1, x0:x1]
        name = self.inputs[0]
        size = self.blobs[name].data.shape[2]
        scale = size / (size - 2.0 * self.context_pad)
        cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
        hh, hw = (y1 - y0) * scale / 2.0, (x1 - x0) * scale / 2.0
        box = np.round([cy - hh, cx - hw, cy + hh, cx + hw]).astype(int)
        h, w = box[2] - box[0], box[3] - box[1]
        clip = np.clip(box, 0, [im.shape[0], im.shape[1], im.shape[0], im.shape[1]])
        out = np.zeros((size, size, im.shape[2]), np.float32)
        if self.crop_mean is not None:
            out[...] = self.crop_mean
        if clip[2] > clip[0] and clip[3] > clip[1] and h > 0 and w > 0:
            sy, sx = size / h, size / w
            oy, ox = int(round((clip[0] - box[0]) * sy)), int(round((clip[1] - box[1]) * sx))
            ch = max(1, int(round((clip[2] - clip[0]) * sy)))
            cw = max(1, int(round((clip[3] - clip[1]) * sx)))
            ch, cw = min(ch, size - oy), min(cw, size - ox)
            out[oy:oy + ch, ox:ox + cw] = resize_image(im[clip[0]:clip[2], clip[1]:clip[3]], (ch, cw))
        return out

    def detect_windows(self, images_windows) -> list[dict]:
        """Score every window of every image: [{'window', 'prediction', 'filename'}, ...]."""
        name = self.inputs[0]
        crop = self.blobs[name].data.shape[2:]
        inputs, meta = [], []
        for filename, windows in images_windows:
            image = load_image(filename).astype(np.float32)
            for window in windows:
                inputs.append(self.transformer.preprocess(name, resize_image(self.crop(image, window), crop)))
                meta.append((filename, window))
        if not inputs:
            return []
        out = self.forward_all(**{name: np.stack(inputs)})[self.outputs[0]]
        return [{"window": np.asarray(w), "prediction": out[i].reshape(-1), "filename": f}
                for i, (f, w) in enumerate(meta)]
