"""Data into a pycaffe Net: its data layers' tops on each forward, and inputs of any length
in batches (pycaffe's forward_all / forward_backward_all / set_input_arrays).

Data layers on forward: Input tops keep what the user wrote; ImageSegData reads its list
(caffe.imageseg, batch after batch); MemoryData serves the arrays given to
``set_input_arrays`` batch by batch, wrapping around, as Caffe's MemoryDataLayer.
"""
from __future__ import annotations

from itertools import zip_longest

import numpy as np

from . import CaffeError


def fill_data_layer(net, i: int, layer) -> bool:
    """Fill data layer ``i``'s tops for one forward; False if it is not a data layer."""
    if layer.type == "MemoryData":
        _memory_data(net, layer)
        return True
    if layer.type == "ImageSegData":
        feed = net._feeds.get(i)
        if feed is None:
            from .imageseg import ImageSegSource, Stream
            phase = "TRAIN" if net._net.phase == 0 else "TEST"
            feed = net._feeds[i] = Stream(ImageSegSource(layer.param, phase))
        b = net._batch_index.get(i, 0)
        net._batch_index[i] = b + 1
        for name, t in feed(b).items():
            net._blob_at[name].set_data(t)
        return True
    if not layer.is_data:
        return False
    if layer.type != "Input":
        raise CaffeError(f"layer {layer.name!r} ({layer.type}): pycaffe reads no data for this layer type; "
                         "use an Input layer and fill net.blobs yourself")
    return True


def set_input_arrays(net, data, labels) -> None:
    """Hand ``data`` (N x C x H x W float32, C-contiguous) and ``labels`` (N, or N x 1 x 1 x 1)
    to the net's first layer, a MemoryData layer; N must be a multiple of its batch_size."""
    layers = net._net.layers
    if not len(layers) or layers[0].type != "MemoryData":
        raise CaffeError("set_input_arrays may only be called if the first layer is a MemoryData layer")
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = np.ascontiguousarray(labels[:, None, None, None])
    p = layers[0].param.memory_data_param
    for name, arr, (c, h, w) in (("data", data, (p.channels, p.height, p.width)), ("labels", labels, (1, 1, 1))):
        if not isinstance(arr, np.ndarray) or not arr.flags["C_CONTIGUOUS"]:
            raise CaffeError(f"set_input_arrays: {name} must be a C-contiguous numpy array")
        if arr.ndim != 4 or arr.dtype != np.float32:
            raise CaffeError(f"set_input_arrays: {name} must be 4-d float32, got {arr.ndim}-d {arr.dtype}")
        if arr.shape[1:] != (c, h, w):
            raise CaffeError(f"set_input_arrays: {name} has shape {arr.shape}; the layer wants N x {c} x {h} x {w}")
    if data.shape[0] != labels.shape[0]:
        raise CaffeError("set_input_arrays: data and labels must have the same first dimension")
    if data.shape[0] % max(int(p.batch_size), 1):
        raise CaffeError(f"set_input_arrays: {data.shape[0]} items is not a multiple of batch_size {p.batch_size}")
    net._memory_data = [data, labels.reshape(-1), 0]


def _memory_data(net, layer) -> None:
    if net._memory_data is None:
        raise CaffeError(f"layer {layer.name!r} (MemoryData) needs its arrays: call net.set_input_arrays first")
    data, labels, pos = net._memory_data
    n = max(int(layer.param.memory_data_param.batch_size), 1)
    tops = [data[pos:pos + n], labels[pos:pos + n]]
    for name, arr in zip(layer.top_names, tops):
        net._blob_at[name].set_data(arr.reshape((n,) + net._blob_at[name].data.shape[1:]))
    net._memory_data[2] = (pos + n) % len(data)


def batches(net, blobs: dict):
    """{name: array of any length} -> {name: one batch}, the last padded with zeros."""
    num = len(next(iter(blobs.values())))
    size = next(iter(net.blobs.values())).data.shape[0]
    for i in range(0, num - num % size, size):
        yield {name: arr[i:i + size] for name, arr in blobs.items()}
    rest = num % size
    if rest:
        yield {name: np.concatenate([arr[-rest:], np.zeros((size - rest,) + arr.shape[1:], arr.dtype)])
               for name, arr in blobs.items()}


def _trim(outs: dict, n: int) -> dict:
    return {k: np.asarray(v)[:n] for k, v in outs.items()}


def forward_all(net, blobs=None, **kwargs) -> dict:
    """forward() over every item of the input arrays; returns {blob: all items}."""
    outs = {name: [] for name in set(net.outputs) | set(blobs or [])}
    for batch in batches(net, kwargs):
        for name, value in net.forward(blobs=blobs, **batch).items():
            outs[name].extend(value.copy())
    return _trim(outs, len(next(iter(kwargs.values()))))


def forward_backward_all(net, blobs=None, diffs=None, **kwargs):
    """forward() then backward() per batch; inputs and output diffs come from ``kwargs``."""
    outs = {name: [] for name in set(net.outputs) | set(blobs or [])}
    grads = {name: [] for name in set(net.inputs) | set(diffs or [])}
    forward = batches(net, {k: kwargs[k] for k in net.inputs if k in kwargs}) if any(
        k in kwargs for k in net.inputs) else iter(())
    backward = batches(net, {k: kwargs[k] for k in net.outputs if k in kwargs}) if any(
        k in kwargs for k in net.outputs) else iter(())
    for fb, bb in zip_longest(forward, backward, fillvalue={}):
        for name, value in net.forward(blobs=blobs, **fb).items():
            outs[name].extend(value.copy())
        for name, value in net.backward(diffs=diffs, **bb).items():
            grads[name].extend(value.copy())
    n = len(next(iter(kwargs.values())))
    return _trim(outs, n), _trim(grads, n)
