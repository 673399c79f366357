"""The fork's MatWrite: write a blob per image to ``<prefix><id>_blob_<i>.mat`` as it runs."""
from __future__ import annotations

import os

import numpy as np

from .. import CaffeError
from ..files import atomic_path
from ..lists import read_list
from . import Layer, register


def blob_to_matlab(chw: np.ndarray) -> np.ndarray:
    """C x H x W (row-major, as Caffe stores it) -> the W x H x C x 1 array MATLAB sees
    (the fork wrote each image as a 4-D W x H x C x N array with N = 1)."""
    return np.ascontiguousarray(np.transpose(chw, (2, 1, 0)))[..., None]


@register("MatWrite")
class MatWrite(Layer):
    """Writes each bottom of every ``period``-th forward pass, one file per image, named by
    the ids of ``source`` (read by ``caffe.lists.read_list``: first column, ``strip``
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
