"""pycaffe's Blob: ``.data`` and ``.diff`` numpy arrays that are the memory the net computes on.

Two kinds behind one interface. :class:`Blob` owns its memory (a net's activations, the tops
and bottoms a Python layer sees). :class:`ParamBlob` is a view of a learnable torch
parameter. On the CPU the arrays are the memory itself; on a GPU they are host mirrors kept
in step lazily, as Caffe's SyncedMemory does: see caffe.syncedmem for the contract. Memory is
allocated on first use, so a TEST net that never runs backward never holds a diff.
"""
from __future__ import annotations

import numpy as np
import torch

from . import syncedmem
from .syncedmem import SyncedMemory


class _Shape:
    """Caffe's Blob accessors shared by both kinds: count, num/channels/height/width."""

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        if len(shape) > 4:
            raise ValueError(f"legacy accessors need a blob of at most 4 axes, this one has {len(shape)}")
        return shape[axis] if axis < len(shape) else 1  # Caffe's LegacyShape: missing axes are 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def __repr__(self) -> str:
        return f"<caffe.Blob shape={self.shape}>"


class Blob(_Shape):
    """A blob with its own float32 memory (data and diff), each allocated on first use."""

    def __init__(self, shape=(), diff_fill: float = 0.0):
        self.diff_fill = float(diff_fill)
        self._alloc(tuple(int(d) for d in shape))

    @classmethod
    def wrap(cls, data: np.ndarray) -> "Blob":
        """A blob over existing float32 ``data`` (shared, not copied) with a zero diff."""
        blob = cls.__new__(cls)
        blob.diff_fill = 0.0
        blob._data, blob._diff = SyncedMemory.over(data), SyncedMemory(data.shape)
        return blob

    @property
    def shape(self) -> tuple:
        return self._data.shape

    @property
    def data(self) -> np.ndarray:
        """The values (a writable float32 array that is the blob's memory, or its host mirror)."""
        return self._data.host()

    @property
    def diff(self) -> np.ndarray:
        """The gradient (a writable float32 array that is the blob's memory, or its host mirror)."""
        return self._diff.host()

    def values(self) -> np.ndarray:
        """The values for reading only (refreshed from the device; the device stays the head)."""
        return self._data.host(mutable=False)

    def _alloc(self, shape: tuple) -> None:
        self._data = SyncedMemory(shape)
        self._diff = SyncedMemory(shape, self.diff_fill)

    def reshape(self, *dims) -> None:
        """Caffe's Blob::Reshape: same count keeps the memory, another count reallocates."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        shape = tuple(int(d) for d in dims)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob dimensions must be >= 0, got {shape}")
        if shape == self.shape:
            return
        if int(np.prod(shape, dtype=np.int64)) == self.count:
            self._data = self._data.reshaped(shape)
            self._diff = self._diff.reshaped(shape)
        else:
            self._alloc(shape)

    def set_data(self, value) -> None:
        """Store values given on the host (a data layer's batch; reshaping first if its shape
        changed): the host becomes the head."""
        arr = value.detach().to("cpu", torch.float32).numpy() if torch.is_tensor(value) else np.asarray(value)
        if arr.shape != self.shape:
            self.reshape(*arr.shape)
        out = self._data.host(keep=False)
        if arr.__array_interface__["data"][0] != out.__array_interface__["data"][0]:
            out[...] = arr

    # -------------------------------------------------------------- the net's side
    def device_data(self, device) -> torch.Tensor:
        """The values as a tensor on ``device`` (the host memory itself on the CPU)."""
        return self._data.device(device)

    def device_diff(self, device) -> torch.Tensor:
        """The diff as a tensor on ``device`` (zeros, or the loss weight, when first used)."""
        return self._diff.device(device)

    def set_device_data(self, value: torch.Tensor, device) -> None:
        """Store a layer's computed top (reshaping first if its shape changed)."""
        if tuple(value.shape) != self.shape:
            self.reshape(*value.shape)
        self._data.set_device(value, device)

    def set_device_diff(self, value: torch.Tensor, device) -> None:
        """Store a computed diff of the blob's shape."""
        self._diff.set_device(value, device)

    def add_device_diff(self, value: torch.Tensor, device) -> None:
        """Add a computed diff to the blob's (a blob read by several layers: Caffe's Split)."""
        if syncedmem.separate(device):
            current = self._diff.device(device)
            self._diff.set_device(current + value.reshape(current.shape).to(current.dtype), device)
        else:
            diff = self._diff.host()
            diff += value.detach().to("cpu", torch.float32).numpy().reshape(diff.shape)

    @property
    def diff_allocated(self) -> bool:
        """Whether the diff has been used (allocated) yet."""
        return self._diff.allocated


class ParamBlob(_Shape):
    """Blob ``index`` of a layer's ParameterList, looked up on each access (so weights shared
    later, by share_with or a solver, are seen)."""

    def __init__(self, plist, index: int):
        self._plist, self._index = plist, index

    @property
    def param(self) -> torch.nn.Parameter:
        return self._plist[self._index]

    @property
    def shape(self) -> tuple:
        return tuple(self.param.shape)

    @property
    def data(self) -> np.ndarray:
        return syncedmem.param_data(self.param)

    @property
    def diff(self) -> np.ndarray:
        return syncedmem.param_diff(self.param)

    def reshape(self, *dims) -> None:
        """Reshape a learnable blob (as Caffe allows; the values become zeros if the count changes)."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        shape = tuple(int(d) for d in dims)
        p = self.param
        syncedmem.push([p])
        with torch.no_grad():
            if int(np.prod(shape, dtype=np.int64)) == p.numel():
                p.data = p.data.reshape(shape)
            else:
                p.data = torch.zeros(shape, dtype=p.dtype, device=p.device)
            p.grad = None
        syncedmem.reshaped(p)


class BlobVec:
    """A layer's learnable blobs (pycaffe's BlobVec) over a torch ParameterList."""

    def __init__(self, plist):
        self._plist = plist

    def __len__(self) -> int:
        return len(self._plist)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self._plist)
        if not -n <= i < n:
            raise IndexError(f"blob index {i} out of range ({n} blobs)")
        return ParamBlob(self._plist, i % n)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def add_blob(self, *dims) -> None:
        """Append a learnable blob of shape ``dims``, zero-filled (Python layers' setup)."""
        shape = tuple(int(d) for d in dims)
        self._plist.append(torch.nn.Parameter(torch.zeros(shape)))
