"""HDF5Output: write a batch of data and labels to an HDF5 file (BVLC's hdf5_output_layer.cpp)."""
from __future__ import annotations

import numpy as np
import torch

from . import Layer, register


@register("HDF5Output")
class HDF5Output(Layer):
    """Writes bottom 0 as dataset ``data`` and bottom 1 as ``label`` of
    ``hdf5_output_param.file_name`` (float32, in Caffe's legacy 4-axis shape num x channels x
    height x width, trailing axes 1; at most 4 axes), the file written whole on the forward
    pass. Caffe creates the file at set-up and adds the two datasets on a forward; a second
    forward finds them there and fails, so one net writes one batch: we refuse the second
    forward with a clear error rather than overwrite. No tops, no backward."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 0

    def setup(self, bottom_shapes):
        from ..files import check_output_file
        self.file_name = self.param.hdf5_output_param.file_name
        try:
            check_output_file(self.file_name, "hdf5_output_param.file_name")
        except Exception as e:
            raise self.error(str(e)) from None
        for name, shape in zip(("data", "label"), bottom_shapes):
            if len(shape) > 4:
                raise self.error(f"bottom {name!r} has {len(shape)} axes; Caffe writes at most 4 (num, channels, "
                                 "height, width)")
        self.written = False
        return []

    def forward(self, data, label):
        from ..files import atomic_path
        from ..hdf5_io import _h5py
        if data.device.type == "meta":   # shape inference (pycaffe's reshape): nothing to write
            return ()
        if data.shape[0] != label.shape[0]:
            raise self.error(f"data and label must have the same batch size, got {data.shape[0]} and "
                             f"{label.shape[0]}")
        if self.written:
            raise self.error(f"{self.file_name} already holds this net's datasets 'data' and 'label'; Caffe's "
                             "HDF5Output writes one batch (one forward) per net")
        arrays = {}
        for name, t in (("data", data), ("label", label)):
            a = t.detach().to("cpu", torch.float32).numpy()
            arrays[name] = np.ascontiguousarray(a.reshape(tuple(a.shape) + (1,) * (4 - a.ndim)), np.float32)
        with atomic_path(self.file_name) as tmp:
            with _h5py().File(tmp, "w") as f:
                for name, a in arrays.items():
                    f.create_dataset(name, data=a)
        self.written = True
        return ()
