"""The fork's MatWrite: write a blob per image to ``<prefix><id>_blob_<i>.mat`` as it runs."""
from __future__ import annotations

import os

import numpy as np

from ..files import atomic_path
from . import Layer, register


def blob_to_matlab(chw: np.ndarray) -> np.ndarray:
    """C x H x W (row-major, as Caffe stores it) -> the W x H x C x 1 array MATLAB sees
    (the fork wrote each image as a 4-D W x H x C x N array with N = 1)."""
    return np.ascontiguousarray(np.transpose(chw, (2, 1, 0)))[..., None]


@register("MatWrite")
class MatWrite(Layer):
    """Writes each bottom of every ``period``-th forward pass, one file per image, named by
    the ids of ``source`` (first column, ``strip`` trailing characters removed) or, without a
    source, ``iter_<k>_<n>``. Variable ``data`` in MATLAB's W x H x C x 1 order; set
    ``self.format = "npy"`` to write C x H x W ``.npy`` files instead."""

    num_bottoms = None
    num_tops = (0,)

    def setup(self, bottom_shapes):
        p = self.param.mat_write_param
        self.prefix = p.prefix
        self.period = int(p.period) or 1
        self.format = "mat"
        self.iteration = 0
        self.written = 0
        self.ids: list[str] = []
        if p.source:
            strip = int(p.strip)
            try:
                with open(p.source) as f:
                    for lineno, line in enumerate(f, 1):
                        if not line.split():
                            continue
                        name = line.split()[0]
                        if strip and len(name) <= strip:
                            raise self.error(f"{p.source}:{lineno}: strip {strip} removes all of {name!r}")
                        self.ids.append(name[: len(name) - strip] if strip else name)
            except OSError as e:
                raise self.error(f"cannot read mat_write_param.source {p.source}: {e.strerror}") from None
        return []

    def forward(self, *bottoms):
        if self.iteration % self.period == 0:
            n = bottoms[0].shape[0]
            for k in range(n):
                if self.ids:
                    if self.written >= len(self.ids):
                        raise self.error(f"more images than ids in {self.param.mat_write_param.source}")
                    name = self.ids[self.written]
                else:
                    name = f"iter_{self.iteration}_{k}"
                for i, blob in enumerate(bottoms):
                    self.write(f"{self.prefix}{name}_blob_{i}", blob[k].detach().float().cpu().numpy())
                self.written += 1
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
