"""The fork's MatRead: a data layer that reads ``<prefix><id>_blob_0.mat`` files (what MatWrite
writes) batch_size at a time."""
from __future__ import annotations

import numpy as np
import torch

from .. import CaffeError
from ..util.lists import read_list
from .base import Layer, register


def matlab_to_blob(array: np.ndarray) -> np.ndarray:
    """The MATLAB W x H x C x N array of a .mat file (trailing singleton dimensions may be
    missing) -> Caffe's N x C x H x W (the inverse of output.blob_to_matlab)."""
    a = np.asarray(array)
    a = a.reshape(a.shape + (1,) * (4 - a.ndim))
    return np.ascontiguousarray(np.transpose(a, (3, 2, 1, 0)))


@register("MatRead")
class MatRead(Layer):
    """Each forward reads batch_size items: item k is the single-precision variable ``data``
    (W x H x C x 1, MATLAB order) of ``<prefix><id>_blob_0.mat``, where the ids are the first
    column of ``source`` with ``strip`` trailing characters removed (read in order, wrapping
    around), or ``iter_<k>`` without a source. The top's shape comes from the first item at
    setup. As DeepLab v2's MatRead; the v1 fork's Forward checked the files' shapes but never
    copied their data into the top (and restarted at the first item every pass)."""

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1

    def setup(self, bottom_shapes):
        p = self.param.mat_read_param
        self.prefix = p.prefix
        self.batch_size = int(p.batch_size)
        if self.batch_size <= 0:
            raise self.error(f"mat_read_param.batch_size must be positive, got {self.batch_size}")
        self.ids: list[str] = []
        if p.HasField("source"):
            strip = int(p.strip)
            if strip < 0:
                raise self.error(f"mat_read_param.strip cannot be negative, got {strip}")
            try:
                lines = read_list(p.source)
            except CaffeError as e:
                raise self.error(f"mat_read_param.source: {e}") from None
            for line in lines:
                if len(line.image) <= strip:
                    raise self.error(f"{line.where}: strip {strip} removes all of {line.image!r}")
                self.ids.append(line.image[: len(line.image) - strip] if strip else line.image)
            if not self.ids:
                raise self.error(f"mat_read_param.source {p.source} lists no files")
        self.iteration = 0
        self.register_buffer("_device", torch.zeros(()), persistent=False)
        self.item_shape = self.read(self.path(0)).shape[1:]
        return [(self.batch_size,) + self.item_shape]

    def path(self, k: int) -> str:
        """The file of item ``k`` (ids wrap around)."""
        name = self.ids[k % len(self.ids)] if self.ids else f"iter_{k}"
        return f"{self.prefix}{name}_blob_0.mat"

    def read(self, path: str) -> np.ndarray:
        """One file's ``data`` as a 1 x C x H x W float32 array."""
        import scipy.io
        try:
            content = scipy.io.loadmat(path)
        except (OSError, ValueError, NotImplementedError) as e:
            raise self.error(f"error opening MAT file {path}: {e}") from None
        if "data" not in content:
            raise self.error(f"field 'data' not present in MAT file {path}")
        data = content["data"]
        if data.dtype != np.float32:
            raise self.error(f"field 'data' must be single precision in MAT file {path}, got {data.dtype}")
        if data.ndim > 4:
            raise self.error(f"field 'data' cannot have more than 4 dimensions in MAT file {path}")
        blob = matlab_to_blob(data)
        if blob.shape[0] != 1:
            raise self.error(f"{path} holds {blob.shape[0]} items (the 4th MATLAB dimension); one expected")
        return blob

    @torch.no_grad()
    def forward(self):
        items = []
        for _ in range(self.batch_size):
            path = self.path(self.iteration)
            blob = self.read(path)
            if blob.shape[1:] != self.item_shape:
                raise self.error(f"{path} is {'x'.join(map(str, blob.shape[1:]))}, the top's items are "
                                 f"{'x'.join(map(str, self.item_shape))}")
            items.append(blob)
            self.iteration += 1
            if self.ids and self.iteration >= len(self.ids):
                self.iteration = 0
        return (torch.from_numpy(np.concatenate(items)).to(self._device.device),)
