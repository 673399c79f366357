"""Data into a pycaffe Net: its data layers' tops on each forward, and inputs of any length
in batches (pycaffe's forward_all / forward_backward_all / set_input_arrays).

Data layers on forward: Input tops keep what the user wrote; ImageSegData, Data, ImageData,
HDF5Data and WindowData read their sources (caffe.data.layer_source, batch after batch);
MemoryData serves the arrays given to ``set_input_arrays`` batch by batch, wrapping around,
as Caffe's MemoryDataLayer.
"""
from __future__ import annotations

from itertools import zip_longest

import numpy as np

from .. import CaffeError


def fill_data_layer(net, i: int, layer) -> bool:
    """Fill data layer ``i``'s tops for one forward; False if it is not a data layer."""
    if layer.type == "MemoryData":
        _memory_data(net, layer)
        return True
    if not layer.is_data:
        return False
    if layer.type == "Input":
        return True
    feed = net._feeds.get(i)
    if feed is None:
        from ..data import layer_source
        from ..data.stream import Stream
        phase = "TRAIN" if net._net.phase == 0 else "TEST"
        feed = net._feeds[i] = Stream(layer_source(layer, phase))
    b = net._batch_index.get(i, 0)
    net._batch_index[i] = b + 1
    for name, t in feed(b).items():
        net._blob_at[name].set_data(t)
    return True


def set_input_arrays(net, data, labels, data_dims=None) -> None:
    """Hand ``data`` (N x C x H x W float32, C-contiguous) and ``labels`` (N, or N x 1 x 1 x 1)
    to the net's first layer, a MemoryData layer; N must be a multiple of its batch_size.
    As BVLC's _caffe.cpp, the arrays are kept, not copied, and each check's message is Caffe's.
    A MemoryData with a third top (data_dim, the DeepLab v2 rewrite whose Reset takes
    datadims) also needs ``data_dims``: each image's (height, width), N x 2 or N x 1 x 1 x 2."""
    layers = net._net.layers
    if not len(layers) or layers[0].type != "MemoryData":
        raise CaffeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
    layer = layers[0]
    if getattr(labels, "ndim", None) == 1:   # pycaffe.py's _Net_set_input_arrays
        labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
    three = len(layer.top_names) == 3
    if three and data_dims is None:
        raise CaffeError(f"layer {layer.name!r} (MemoryData) has a third top, {layer.top_names[2]!r}: "
                         "set_input_arrays needs data_dims too (each image's height, width; N x 2)")
    if not three and data_dims is not None:
        raise CaffeError(f"layer {layer.name!r} (MemoryData) has 2 tops: data_dims is only for a third "
                         "(data_dim) top")
    if getattr(data_dims, "ndim", None) == 2:
        data_dims = np.ascontiguousarray(data_dims[:, np.newaxis, np.newaxis, :])
    p = layer.param.memory_data_param
    arrays = [("data array", data, (p.channels, p.height, p.width)), ("labels array", labels, (1, 1, 1))]
    if three:
        arrays.append(("data_dims array", data_dims, (1, 1, 2)))
    for name, arr, (c, h, w) in arrays:
        if not isinstance(arr, np.ndarray):
            raise CaffeError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if not arr.flags["C_CONTIGUOUS"]:
            raise CaffeError(f"{name} must be C contiguous")
        if arr.ndim != 4:
            raise CaffeError(f"{name} must be 4-d")
        if arr.dtype != np.float32:
            raise CaffeError(f"{name} must be float32")
        for axis, want, what in ((1, c, "number of channels"), (2, h, "height"), (3, w, "width")):
            if arr.shape[axis] != want:
                raise CaffeError(f"{name} has wrong {what} ({arr.shape[axis]}; the layer wants {want})")
    if data.shape[0] != labels.shape[0] or (three and data.shape[0] != data_dims.shape[0]):
        raise CaffeError("data and labels must have the same first dimension" + (" (data_dims too)" if three else ""))
    if data.shape[0] % int(p.batch_size):
        raise CaffeError(f"first dimensions of input arrays must be a multiple of batch size ({data.shape[0]} "
                         f"items, batch_size {p.batch_size})")
    net._memory_data = [data, labels, 0] + ([data_dims] if three else [])


def _memory_data(net, layer) -> None:
    """MemoryDataLayer::Forward: batch_size items from ``pos`` (data N x C x H x W, labels
    reshaped N x 1 x 1 x 1 as Caffe does, data_dim N x 1 x 1 x 2 where the layer has that
    third top), then pos advances and wraps to 0 at the end."""
    if net._memory_data is None:
        raise CaffeError(f"layer {layer.name!r} (MemoryData) needs its arrays: call net.set_input_arrays first "
                         "(Caffe: MemoryDataLayer needs to be initialized by calling Reset)")
    data, labels, pos = net._memory_data[:3]
    arrays = [data, labels] + net._memory_data[3:]
    n = int(layer.param.memory_data_param.batch_size)
    for name, arr in zip(layer.top_names, arrays):
        net._blob_at[name].set_data(arr[pos:pos + n])
    net._memory_data[2] = (pos + n) % len(data)


def batches(net, blobs: dict):
    """{name: array of any length} -> {name: one batch}, the last padded with zeros."""
    num = len(next(iter(blobs.values())))
    size = next(iter(net.blobs.values())).shape[0]
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
