"""pycaffe's ``caffe.io``: blob / datum protos <-> arrays, image loading and resizing, and the
Transformer that turns H x W x K images into a net's K x H x W inputs.

Images are read with caffe.util.images.read_image (the project's one image reader) and resized
with scipy.ndimage as BVLC's pycaffe resizes them with skimage (mode='constant') and ndimage.
"""
from __future__ import annotations

import numpy as np

from .proto import caffe_pb2


# ------------------------------------------------------------------ protos
def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) shaped by its legacy num/channels/height/width if any is
    set, else by ``shape`` (no shape: one value becomes a scalar; more is a ValueError)."""
    values = np.array(blob.diff if return_diff else blob.data)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None):
    """An N-d array (and optionally its diff, same shape) as a BlobProto with ``shape``."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Arrays serialised as one BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(data: bytes) -> list:
    """A serialised BlobProtoVector as a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A C x H x W array as a Datum: uint8 as bytes in ``data``, others as ``float_data``;
    ``label`` is set only when given."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A Datum's values as a C x H x W array (uint8 from ``data``, float from ``float_data``)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data, dtype=float).reshape(shape)


# ------------------------------------------------------------------ images
def load_image(filename, color: bool = True) -> np.ndarray:
    """An image as float32 in [0, 1]: H x W x 3 RGB, or H x W x 1 intensity when ``color`` is False."""
    from .util.images import read_image
    return read_image(filename, color=color, rgb=True).astype(np.float32) / 255.0


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K array to ``new_dims`` (height, width), as BVLC's pycaffe does.

    K = 1 or 3: the image is scaled to [0, 1], resized as ``skimage.transform.resize(...,
    order=interp_order, mode='constant')`` (skimage of Caffe's time: no anti-aliasing; pixel
    centres aligned, samples beyond the border blend toward the constant 0, i.e. toward the
    image's minimum once scaled back) and scaled back; a constant image stays constant. Other
    K: ``scipy.ndimage.zoom`` with corner-aligned samples, as BVLC. Orders 0 (nearest), 1
    (linear) and 3 (cubic spline)."""
    from scipy import ndimage
    if interp_order not in (0, 1, 3):
        raise ValueError(f"interp_order must be 0, 1 or 3, got {interp_order}")
    im = np.asarray(im, dtype=np.float32)
    h, w = int(new_dims[0]), int(new_dims[1])
    if im.ndim != 3:
        raise ValueError(f"resize_image needs an H x W x K array, got shape {im.shape}")
    if im.shape[-1] not in (1, 3):
        scale = (h / im.shape[0], w / im.shape[1], 1.0)
        return ndimage.zoom(im, scale, order=interp_order).astype(np.float32)
    low, high = float(im.min()), float(im.max())
    if not high > low:
        return np.full((h, w, im.shape[-1]), low, np.float32)
    std = (im.astype(np.float64) - low) / (high - low)
    # skimage's resize: zoom on the pixel grid (grid_mode), outside the image the constant 0;
    # its clip keeps the result within [min(0, cval), 1].
    out = ndimage.zoom(std, (h / im.shape[0], w / im.shape[1], 1.0), order=interp_order, mode="grid-constant",
                       cval=0.0, grid_mode=True)
    out = np.clip(out, 0.0, 1.0)
    return (out * (high - low) + low).astype(np.float32)


def oversample(images, crop_dims) -> np.ndarray:
    """The four corner crops and the centre crop of each image, then the same mirrored:
    10*N x h x w x K."""
    crop_h, crop_w = int(crop_dims[0]), int(crop_dims[1])
    first = np.asarray(images[0])
    h, w = first.shape[:2]
    cy, cx = h / 2.0, w / 2.0
    corners = [(0, 0), (0, w - crop_w), (h - crop_h, 0), (h - crop_h, w - crop_w),
               (int(cy - crop_h / 2.0), int(cx - crop_w / 2.0))]
    out = np.empty((10 * len(images), crop_h, crop_w, first.shape[-1]), np.float32)
    k = 0
    for im in images:
        crops = np.stack([np.asarray(im)[y:y + crop_h, x:x + crop_w, :] for y, x in corners])
        out[k:k + 5] = crops
        out[k + 5:k + 10] = crops[:, :, ::-1, :]
        k += 10
    return out


# ------------------------------------------------------------------ the transformer
class Transformer:
    """Prepares images for a net's inputs. ``inputs`` maps input names to their blob shapes
    (e.g. ``{'data': net.blobs['data'].data.shape}``). preprocess: float32, resize to the
    blob's H x W, transpose, channel swap, x raw_scale, - mean, x input_scale; deprocess undoes it."""

    def __init__(self, inputs: dict):
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.transpose, self.channel_swap, self.raw_scale, self.mean, self.input_scale = {}, {}, {}, {}, {}

    def _check(self, name: str) -> None:
        if name not in self.inputs:
            raise KeyError(f"{name} is not one of the net inputs: {list(self.inputs)}")

    def preprocess(self, name: str, data) -> np.ndarray:
        """An H' x W' x K image as the K x H x W input of blob ``name``."""
        self._check(name)
        x = np.asarray(data).astype(np.float32, copy=False)
        dims = self.inputs[name][2:]
        if x.shape[:2] != dims:
            x = resize_image(x, dims)
        if name in self.transpose:
            x = x.transpose(self.transpose[name])
        if name in self.channel_swap:
            x = x[list(self.channel_swap[name]), :, :]
        x = np.array(x, np.float32)  # our own copy from here on
        if name in self.raw_scale:
            x *= self.raw_scale[name]
        if name in self.mean:
            x -= self.mean[name]
        if name in self.input_scale:
            x *= self.input_scale[name]
        return x

    def deprocess(self, name: str, data) -> np.ndarray:
        """Undo preprocess (without the resize)."""
        self._check(name)
        x = np.array(data, dtype=np.float32).squeeze()
        if name in self.input_scale:
            x /= self.input_scale[name]
        if name in self.mean:
            x += self.mean[name]
        if name in self.raw_scale:
            x /= self.raw_scale[name]
        if name in self.channel_swap:
            x = x[np.argsort(self.channel_swap[name]), :, :]
        if name in self.transpose:
            x = x.transpose(np.argsort(self.transpose[name]))
        return x

    def set_transpose(self, name: str, order) -> None:
        """Axis order, e.g. (2, 0, 1) turns H x W x K into K x H x W."""
        self._check(name)
        if len(order) != len(self.inputs[name]) - 1:
            raise ValueError("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[name] = tuple(order)

    def set_channel_swap(self, name: str, order) -> None:
        """Channel order after the transpose, e.g. (2, 1, 0) turns RGB into BGR."""
        self._check(name)
        if len(order) != self.inputs[name][1]:
            raise ValueError("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[name] = tuple(order)

    def set_raw_scale(self, name: str, scale: float) -> None:
        """Multiply the raw image by ``scale`` (255 for [0, 1] images and ImageNet models)."""
        self._check(name)
        self.raw_scale[name] = scale

    def set_mean(self, name: str, mean) -> None:
        """Subtract ``mean``: one value per channel (K,) or a K x H x W (or H x W) image of
        the input's shape (another shape is a ValueError, as in BVLC's pycaffe)."""
        self._check(name)
        mean = np.asarray(mean, dtype=np.float32)
        if mean.ndim == 1:
            if mean.shape[0] != self.inputs[name][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, None, None]
        else:
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3:
                raise ValueError("Mean shape invalid")
            if mean.shape != tuple(self.inputs[name][1:]):   # BVLC 1.0 raises; it does not resize
                raise ValueError("Mean shape incompatible with input shape.")
        self.mean[name] = mean

    def set_input_scale(self, name: str, scale: float) -> None:
        """Multiply the preprocessed input by ``scale`` (after the mean is subtracted)."""
        self._check(name)
        self.input_scale[name] = scale
