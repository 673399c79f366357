"""pycaffe's Blob: ``.data`` and ``.diff`` numpy arrays that are the memory the net computes on.

Two kinds behind one interface. :class:`Blob` owns host arrays (a net's activations, the
tops and bottoms a Python layer sees). :class:`ParamBlob` is a view of a learnable torch
parameter: on the CPU its arrays share the parameter's and its gradient's storage; on a GPU
they are host mirrors that :func:`push` / :func:`pull` copy to and from the device around
every computation (Caffe's SyncedMemory does the same, lazily).
"""
from __future__ import annotations

import weakref

import numpy as np
import torch


class _Shape:
    """Caffe's Blob accessors shared by both kinds: shape, count, num/channels/height/width."""

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

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
    """A blob with its own float32 host memory (data and diff)."""

    def __init__(self, shape=(), diff_fill: float = 0.0):
        self.diff_fill = float(diff_fill)
        self._alloc(tuple(int(d) for d in shape))

    @classmethod
    def wrap(cls, data: np.ndarray) -> "Blob":
        """A blob over existing float32 ``data`` (shared, not copied) with a zero diff."""
        blob = cls.__new__(cls)
        blob.diff_fill, blob._data, blob._diff = 0.0, data, np.zeros(data.shape, np.float32)
        return blob

    @property
    def data(self) -> np.ndarray:
        """The values (a writable float32 array that is the blob's memory)."""
        return self._data

    @property
    def diff(self) -> np.ndarray:
        """The gradient (a writable float32 array that is the blob's memory)."""
        return self._diff

    def _alloc(self, shape: tuple) -> None:
        self._data = np.zeros(shape, np.float32)
        self._diff = np.full(shape, self.diff_fill, np.float32)

    def reshape(self, *dims) -> None:
        """Caffe's Blob::Reshape: same count keeps the memory, another count reallocates."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        shape = tuple(int(d) for d in dims)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob dimensions must be >= 0, got {shape}")
        if shape == self.data.shape:
            return
        if int(np.prod(shape, dtype=np.int64)) == self.data.size:
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._alloc(shape)

    def set_data(self, value) -> None:
        """Store a computed top (reshaping first if its shape changed)."""
        arr = value.detach().to("cpu", torch.float32).numpy() if torch.is_tensor(value) else np.asarray(value)
        if arr.shape != self.data.shape:
            self.reshape(*arr.shape)
        if arr.__array_interface__["data"][0] != self._data.__array_interface__["data"][0]:
            self._data[...] = arr  # (the same memory when an in-place layer wrote its bottom)


# Host mirrors of device parameters: param -> (data array, diff array).
_MIRRORS: "weakref.WeakKeyDictionary[torch.Tensor, list]" = weakref.WeakKeyDictionary()


def host_data(param: torch.Tensor) -> np.ndarray:
    """The numpy array that is ``param``'s memory (its host mirror on a GPU)."""
    if param.device.type == "cpu":
        return param.detach().numpy()
    return _mirror(param)[0]


def host_diff(param: torch.Tensor) -> np.ndarray:
    """The numpy array that is ``param``'s diff (its gradient; created as zeros if absent)."""
    if param.grad is None:
        param.grad = torch.zeros_like(param)
    if param.device.type == "cpu":
        return param.grad.numpy()
    return _mirror(param)[1]


def _mirror(param: torch.Tensor) -> list:
    m = _MIRRORS.get(param)
    if m is None:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        m = [param.detach().cpu().numpy().copy(), param.grad.detach().cpu().numpy().copy()]
        _MIRRORS[param] = m
    return m


@torch.no_grad()
def push(params) -> None:
    """Copy the host mirrors of device parameters to the device (before computing)."""
    for p in params:
        m = _MIRRORS.get(p)
        if m is None:
            continue
        p.copy_(torch.from_numpy(m[0]))
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad.copy_(torch.from_numpy(m[1]))


@torch.no_grad()
def pull(params) -> None:
    """Copy device parameters back into their host mirrors (after computing)."""
    for p in params:
        m = _MIRRORS.get(p)
        if m is None:
            continue
        m[0][...] = p.detach().cpu().numpy()
        if p.grad is None:
            m[1][...] = 0
        else:
            m[1][...] = p.grad.detach().cpu().numpy()


class ParamBlob(_Shape):
    """Blob ``index`` of a layer's ParameterList, looked up on each access (so weights shared
    later, by share_with or a solver, are seen)."""

    def __init__(self, plist, index: int):
        self._plist, self._index = plist, index

    @property
    def param(self) -> torch.nn.Parameter:
        return self._plist[self._index]

    @property
    def data(self) -> np.ndarray:
        return host_data(self.param)

    @property
    def diff(self) -> np.ndarray:
        return host_diff(self.param)

    def reshape(self, *dims) -> None:
        """Reshape a learnable blob (as Caffe allows; the values become zeros if the count changes)."""
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        shape = tuple(int(d) for d in dims)
        p = self.param
        with torch.no_grad():
            if int(np.prod(shape, dtype=np.int64)) == p.numel():
                p.data = p.data.reshape(shape)
            else:
                p.data = torch.zeros(shape, dtype=p.dtype, device=p.device)
            p.grad = None
        _MIRRORS.pop(p, None)


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
