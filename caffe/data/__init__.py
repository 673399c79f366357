"""Data sources of Caffe's data layers, one registry keyed by layer type.

A source is a torch Dataset indexed by stream position: position p is the p-th sample the layer
would hand out in one process (batches and shards: caffe.data.stream). An item is (one array per
top, ..., where) or the CaffeError it raised (so a worker's error reaches the caller). Random
choices (crop, mirror, shuffles) are drawn from (seed, position) or (seed, epoch), so any batch
can be re-read.

| type | source |
|---|---|
| ImageSegData (the DeepLab fork) | caffe.data.image_seg |
| Data, ImageData, HDF5Data | caffe.data.sources |
| WindowData | caffe.data.window_data |
| DenseImageData (SegNet) | caffe.data.dense_image_data |

Modules are imported on first use (``layer_source``), so building a net does not load them.
"""
from __future__ import annotations

import importlib

from .. import CaffeError

SOURCES = {
    "ImageSegData": "image_seg:ImageSegSource",
    "Data": "sources:DataSource",
    "ImageData": "sources:ImageDataSource",
    "HDF5Data": "sources:HDF5Source",
    "WindowData": "window_data:WindowSource",
    "DenseImageData": "dense_image_data:DenseImageDataSource",
}

# Data-producing types whose data code hands over, and why no source reads them.
_FED_BY_CODE = {
    "MemoryData": ("MemoryData holds the arrays given to pycaffe's Net.set_input_arrays; training, caffe test "
                   "and caffe time cannot fill it (Caffe: MemoryDataLayer needs to be initialized by calling Reset)"),
}


def source_class(layer_type: str):
    """The source class registered for ``layer_type`` (None when no source reads that type)."""
    entry = SOURCES.get(layer_type)
    if entry is None:
        return None
    module, name = entry.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def layer_source(layer, phase: str, seed: int = 0, net=None):
    """The source (a Dataset by stream position) of a built data layer; ``net``, when given, lets
    ImageSegData check label values against the losses that read them."""
    cls = source_class(layer.type)
    if cls is not None:
        return cls.for_net(layer.param, phase, seed, net)
    where = f"layer {layer.param.name!r} ({layer.type})"
    if layer.type in _FED_BY_CODE:
        raise CaffeError(f"{where}: {_FED_BY_CODE[layer.type]}")
    raise CaffeError(f"{where}: training, caffe test and caffe time read data only through "
                     f"{', '.join(SOURCES)} layers; an Input layer needs its data fed by code")
