"""Layers that write files as the net runs: the fork's MatWrite (a blob per image to
``<prefix><id>_blob_<i>.mat``) and BVLC's HDF5Output (a batch of data and labels to an HDF5 file).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .. import CaffeError
from ..util.files import atomic_path
from ..util.lists import read_list
from .base import Layer, register


def blob_to_matlab(chw: np.ndarray) -> np.ndarray:
    """C x H x W (row-major, as Caffe stores it) -> the W x H x C x 1 array MATLAB sees
    (the fork wrote each image as a 4-D W x H x C x N array with N = 1)."""
    return np.ascontiguousarray(np.transpose(chw, (2, 1, 0)))[..., None]


@register("MatWrite")
class MatWrite(Layer):
    """Writes each bottom of every ``period``-th forward pass, one file per image, named by
    the ids of ``source`` (read by ``caffe.util.lists.read_list``: first column, ``strip``
    trailing characters removed; the i-th id names the i-th image) or, without a source,
    ``iter_<k>_<n>``. Variable ``data`` in MATLAB's W x H x C x 1 order; set
    ``self.format = "npy"`` to write C x H x W ``.npy`` files instead."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def setup(self, bottom_shapes):
        p = self.param.mat_write_param
        self.prefix = p.prefix
        self.period = int(p.period)
        if self.period < 1:
            raise self.error(f"mat_write_param.period must be positive, got {self.period}")
        self.format = "mat"
        self.iteration = 0
        self.ids: list[str] = []
        if p.source:
            strip = int(p.strip)
            if strip < 0:
                raise self.error(f"mat_write_param.strip cannot be negative, got {strip}")
            try:
                lines = read_list(p.source)
            except CaffeError as e:
                raise self.error(f"mat_write_param.source: {e}") from None
            for line in lines:
                if strip and len(line.image) <= strip:
                    raise self.error(f"{line.where}: strip {strip} removes all of {line.image!r}")
                self.ids.append(line.image[: len(line.image) - strip] if strip else line.image)
        return []

    def forward(self, *bottoms):
        if self.iteration % self.period == 0:
            n = bottoms[0].shape[0]
            for k in range(n):
                if self.ids:
                    # As the fork: the file of iteration i is named by the i-th id (one id per
                    # image of the batch), whether or not the iterations between were written.
                    index = self.iteration * n + k
                    if index >= len(self.ids):
                        raise self.error(f"image {index + 1} has no id: {self.param.mat_write_param.source} "
                                         f"lists {len(self.ids)}")
                    name = self.ids[index]
                else:
                    name = f"iter_{self.iteration}_{k}"
                for i, blob in enumerate(bottoms):
                    self.write(f"{self.prefix}{name}_blob_{i}", blob[k].detach().float().cpu().numpy())
        self.iteration += 1
        return ()

    def write(self, stem: str, chw: np.ndarray) -> None:
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        if self.format == "npy":
            with atomic_path(stem + ".npy") as tmp:
                np.save(tmp, chw)
            return
        import scipy.io
        with atomic_path(stem + ".mat") as tmp:
            scipy.io.savemat(tmp, {"data": blob_to_matlab(chw)})


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
        from ..util.files import check_output_file
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
        from ..util.files import atomic_path
        from ..util.hdf5 import _h5py
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
