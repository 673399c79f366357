"""What BVLC's data sources share: the layer prefix of their errors, the mean file,
``CaffeTransform`` (Caffe's DataTransformer, data_transformer.cpp: crop (random offset in TRAIN,
centred in TEST; the image must be at least crop_size), then (pixel - mean) * scale with the mean
from ``mean_file`` (a BlobProto of the full image size, cropped with the image) or ``mean_value``
(1, or one per channel), then a horizontal mirror with probability 1/2 when ``mirror``) and the
``_Source`` base class (a torch Dataset indexed by stream position, see caffe.data).
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from .. import CaffeError


def layer_where(lp) -> str:
    """``layer 'name' (Type)``, the prefix of a layer's errors."""
    return f"layer {lp.name!r} ({lp.type})"


def read_mean_file(path: str, where: str) -> np.ndarray:
    """A binaryproto BlobProto mean as Caffe's Blob::FromProto sees it: legacy (num, channels,
    height, width), trailing axes 1 for a shape of fewer than 4 axes; returns channels x
    height x width (the first item)."""
    from ..proto import caffe_pb2
    blob = caffe_pb2.BlobProto()
    try:
        with open(path, "rb") as f:
            blob.ParseFromString(f.read())
    except FileNotFoundError:
        raise CaffeError(f"{where}: mean_file {path} not found") from None
    except Exception as e:
        raise CaffeError(f"{where}: mean_file {path} is not a BlobProto ({e})") from None
    if blob.HasField("shape"):
        dims = [int(d) for d in blob.shape.dim]
        if len(dims) > 4:
            raise CaffeError(f"{where}: mean_file {path} has {len(dims)} axes; at most 4 are allowed")
        dims = dims + [1] * (4 - len(dims))
    else:
        dims = [int(blob.num), int(blob.channels), int(blob.height), int(blob.width)]
    values = np.asarray(blob.double_data if len(blob.double_data) else blob.data, np.float32)
    if values.size != int(np.prod(dims)):
        raise CaffeError(f"{where}: mean_file {path} says shape {tuple(dims)} but holds {values.size} values")
    c, h, w = dims[1:]
    return values[: c * h * w].reshape(c, h, w)


class CaffeTransform:
    """transform_param applied to one C x H x W array (see the module doc)."""

    def __init__(self, tp, train: bool, where: str):
        self.where, self.train = where, train
        self.crop, self.mirror, self.scale = int(tp.crop_size), bool(tp.mirror), np.float32(tp.scale)
        self.force_color, self.force_gray = bool(tp.force_color), bool(tp.force_gray)
        self.mean_values = np.asarray(tp.mean_value, np.float32)
        self.mean = None
        if tp.HasField("mean_file"):
            if len(tp.mean_value):
                raise CaffeError(f"{where}: cannot specify mean_file and mean_value at the same time")
            self.mean = read_mean_file(tp.mean_file, where)

    def shape(self, c: int, h: int, w: int) -> tuple[int, int, int]:
        """Caffe's InferBlobShape for a C x H x W input (checks it covers the crop)."""
        if self.crop and (h < self.crop or w < self.crop):
            raise CaffeError(f"{self.where}: input {h}x{w} is smaller than crop_size {self.crop}")
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def __call__(self, chw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The transformed float32 array (C x crop x crop, or C x H x W without a crop)."""
        c, h, w = chw.shape
        self.shape(c, h, w)
        do_mirror = self.mirror and bool(rng.integers(2))
        y = x = 0
        oh, ow = h, w
        if self.crop:
            oh = ow = self.crop
            if self.train:
                y, x = int(rng.integers(h - oh + 1)), int(rng.integers(w - ow + 1))
            else:
                y, x = (h - oh) // 2, (w - ow) // 2
        out = chw[:, y:y + oh, x:x + ow].astype(np.float32)
        if self.mean is not None:
            if self.mean.shape != (c, h, w):
                raise CaffeError(f"{self.where}: mean_file is {'x'.join(map(str, self.mean.shape))} but the "
                                 f"data is {c}x{h}x{w} (channels x height x width)")
            out -= self.mean[:, y:y + oh, x:x + ow]
        elif self.mean_values.size:
            if self.mean_values.size not in (1, c):
                raise CaffeError(f"{self.where}: specify either 1 mean_value or as many as channels: {c}")
            out -= self.mean_values.reshape(-1, 1, 1)
        if self.scale != 1:
            out *= self.scale
        if do_mirror:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, *keys])


def _batch_size(value, where: str, field: str) -> int:
    if int(value) <= 0:
        raise CaffeError(f"{where}: {field}.batch_size must be positive, got {int(value)}")
    return int(value)


class _Source(Dataset):
    """What every source shares: tops, batch size, the (seed, position) random generator and
    errors returned (not raised) from ``__getitem__`` so a worker's error reaches the caller.
    Each source defines ``item(pos)`` (one sample's arrays) and ``top_shapes()``."""

    def __init__(self, lp, phase: str, seed: int):
        self.where, self.name, self.tops = layer_where(lp), lp.name, list(lp.top)
        self.train, self.seed = phase.upper() == "TRAIN", int(seed)

    def read_lines(self, source: str, last_space: bool = False) -> list:
        """The list file's sample lines (caffe.util.lists.read_list), errors naming this layer."""
        from ..util.lists import read_list
        try:
            return read_list(source, last_space)
        except CaffeError as e:
            raise CaffeError(f"{self.where}: {e}") from None

    def __getitem__(self, pos: int):
        try:
            return self.item(pos)
        except CaffeError as e:
            return e

    @classmethod
    def for_net(cls, lp, phase: str, seed: int, net=None):
        """The source of layer ``lp`` (``net``: the built Net, for sources that check labels)."""
        return cls(lp, phase, seed)
