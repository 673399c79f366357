"""Host and device memory of pycaffe's blobs, synchronised lazily as BVLC's SyncedMemory.

A blob's values live in up to two places: a host numpy array (what ``.data`` / ``.diff``
return) and, when the net runs on a device whose memory is not the host's (a GPU), a device
tensor. ``head`` says which is current: HOST (the host array was handed out writable, or only
it exists), DEVICE (a device computation wrote the tensor), SYNCED (both hold the same values).
A copy is made only when one side is read while the other is ahead; nothing is allocated
before its first use (Caffe's UNINITIALIZED), so a TEST net never holds diffs.

The contract pycaffe's users see (as BVLC's, on one fixed host array per blob):

* Each access to ``.data`` / ``.diff`` returns the blob's one host array, first refreshed from
  the device if the device is ahead; the host is then the head, and the device reads it back
  before its next use. An array kept from an earlier access (in CPU mode too) is the same
  memory, so it shows the net's values again after any later access to the blob.
* On the CPU the host array is the memory the net computes on: nothing is ever copied.
* On a device, a kept array goes stale when a pass writes the blob (as in BVLC). So that a
  write through it is not silently lost, it is made read-only until the next ``.data`` /
  ``.diff`` access (numpy then refuses the write: "assignment destination is read-only").

Learnable blobs are torch parameters, the engine's own memory; :func:`param_data` /
:func:`param_diff` give their host arrays, :func:`push` hands host edits to the device before
the device uses them, :func:`device_wrote` records that the device may have changed them, and
:func:`place` moves them between the CPU and a device keeping the host arrays. Every copy goes
through :func:`h2d` or :func:`d2h`.
"""
from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch

UNINITIALIZED, HOST, DEVICE, SYNCED = "uninitialized", "host", "device", "synced"


def separate(device) -> bool:
    """Whether memory on ``device`` is not the host's (every device but the CPU): blobs then
    keep a host mirror, and reading a value on the host is a copy and a wait for the device.
    ``cpu:0`` (the CPU named with an index, which pycaffe never uses) counts as such a device:
    its tensors are CPU memory kept apart from the host arrays, a stand-in for a GPU in tests."""
    device = torch.device(device)
    return device.type != "cpu" or device.index is not None


def h2d(host: np.ndarray, device) -> torch.Tensor:
    """A new device tensor holding a copy of the host array ``host``."""
    with _open(host):
        return torch.from_numpy(host).to(device, copy=True)


def d2h(tensor: torch.Tensor, host: np.ndarray) -> None:
    """Copy a device tensor's values into the host array ``host`` (float32, same count)."""
    with _open(host):
        torch.from_numpy(host).copy_(tensor.detach().reshape(host.shape))


@contextlib.contextmanager
def _open(array: np.ndarray):
    """The array made writable for the duration (torch takes only writable numpy memory)."""
    flag = array.flags.writeable
    _writable(array, True)
    try:
        yield
    finally:
        _writable(array, flag)


def _same(a, b) -> bool:
    """Whether two torch devices are the same (an index left out matches any)."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _writable(array: np.ndarray, flag: bool) -> None:
    if array.flags.writeable != flag:
        array.flags.writeable = flag


class SyncedMemory:
    """One float32 array of ``shape`` on the host and on a device; ``fill`` is the value it
    holds when first used (Caffe zero-fills; a loss top's diff starts at its loss weight)."""

    def __init__(self, shape: tuple, fill: float = 0.0):
        self.shape, self.fill = tuple(shape), float(fill)
        self._buf: np.ndarray | None = None     # the flat host allocation (stays writable)
        self._host: np.ndarray | None = None    # the shaped view handed out
        self._dev: torch.Tensor | None = None
        self.head = UNINITIALIZED

    @property
    def count(self) -> int:
        """The number of values."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def allocated(self) -> bool:
        """Whether any memory has been allocated yet (on either side)."""
        return self.head != UNINITIALIZED

    def _host_alloc(self) -> None:
        if self._host is None:
            self._buf = np.empty(int(np.prod(self.shape, dtype=np.int64)), np.float32)
            self._host = self._buf.reshape(self.shape)

    @classmethod
    def over(cls, array: np.ndarray) -> "SyncedMemory":
        """Memory that is the existing float32 host array ``array`` (shared, not copied)."""
        mem = cls(array.shape)
        mem._buf = mem._host = array
        mem.head = HOST
        return mem

    def host(self, mutable: bool = True, keep: bool = True) -> np.ndarray:
        """The host array, refreshed from the device if the device is ahead. ``mutable`` (what
        ``.data`` / ``.diff`` hand out) makes the host the head (Caffe's mutable_cpu_data);
        ``keep=False`` is for a caller that overwrites every value (nothing is copied or filled)."""
        if self.head == UNINITIALIZED:
            self._host_alloc()
            if keep:
                self._host.fill(self.fill)
            self.head = HOST
        elif self.head == DEVICE:
            self._host_alloc()
            if keep:
                d2h(self._dev, self._host)
            self.head = SYNCED
        if mutable or not keep:
            self.head = HOST
        _writable(self._host, self.head == HOST or self._dev is None)
        return self._host

    def device(self, device) -> torch.Tensor:
        """The values as a tensor on ``device`` for a layer to read: the host array itself on the
        CPU, else the device copy, made from the host if the host is ahead."""
        if not separate(device):
            return torch.from_numpy(self.host())
        if self.head == UNINITIALIZED:
            self._dev = torch.full(self.shape, self.fill, dtype=torch.float32, device=device)
            self.head = DEVICE
        elif self.head == HOST:
            self._dev = h2d(self._host, device)
            self.head = SYNCED
        elif not _same(self._dev.device, device):
            self._dev = self._dev.to(device)
        if self._host is not None:
            _writable(self._host, False)
        return self._dev

    def set_device(self, tensor: torch.Tensor, device) -> None:
        """Store a computed value (a layer's top, a bottom's diff): on the CPU into the host
        array, on a device as the device memory (the host array goes stale)."""
        tensor = tensor.detach()
        if not separate(device):
            out = self.host(keep=tensor.numel() != self.count)
            src = torch.from_numpy(out)
            if tensor.data_ptr() != src.data_ptr():   # (the same memory when an in-place layer wrote it)
                src.copy_(tensor.reshape(self.shape))
            return
        self._dev = tensor.to(torch.float32).reshape(self.shape)
        self.head = DEVICE
        if self._host is not None:
            _writable(self._host, False)

    def reshaped(self, shape: tuple) -> "SyncedMemory":
        """The same memory under another shape of the same count (Blob::Reshape)."""
        other = SyncedMemory(shape, self.fill)
        other.head = self.head
        if self._host is not None:
            other._buf, other._host = self._buf, self._buf.reshape(shape)
            _writable(other._host, self._host.flags.writeable)
        if self._dev is not None:
            other._dev = self._dev.reshape(shape)
        return other


# ------------------------------------------------------------------ learnable blobs
class _Mirror:
    """Host arrays of a device parameter and its gradient, with their heads."""

    def __init__(self, data: np.ndarray, diff: np.ndarray | None, head: str):
        self.data, self.diff = data, diff
        self.data_head = head
        self.diff_head = head if diff is not None else UNINITIALIZED


# id(param) -> (weak reference, mirror); by id, as tensors compare elementwise.
_MIRRORS: dict[int, tuple] = {}


def _get(param: torch.Tensor) -> _Mirror | None:
    entry = _MIRRORS.get(id(param))
    return entry[1] if entry is not None and entry[0]() is param else None


def _set(param: torch.Tensor, mirror: _Mirror) -> None:
    key = id(param)

    def gone(ref, key=key):
        if key in _MIRRORS and _MIRRORS[key][0] is ref:
            del _MIRRORS[key]
    _MIRRORS[key] = (weakref.ref(param, gone), mirror)


def _pop(param: torch.Tensor) -> _Mirror | None:
    m = _get(param)
    if m is not None:
        del _MIRRORS[id(param)]
    return m


def _mirrored(param: torch.Tensor) -> bool:
    """Whether the parameter lives on a device with a host mirror (made on first use)."""
    return _get(param) is not None or separate(param.device)


def _mirror(param: torch.Tensor) -> _Mirror:
    m = _get(param)
    if m is None:
        m = _Mirror(np.empty(tuple(param.shape), np.float32), None, DEVICE)
        _set(param, m)
    return m


def param_data(param: torch.Tensor, mutable: bool = True) -> np.ndarray:
    """The host array of a learnable blob (``.data``): the parameter's own memory on the CPU,
    else its host mirror, refreshed if the device is ahead; ``mutable`` makes the host the head."""
    if not _mirrored(param):
        return param.detach().numpy()
    m = _mirror(param)
    if m.data_head == DEVICE:
        d2h(param, m.data)
        m.data_head = SYNCED
    if mutable:
        m.data_head = HOST
    _writable(m.data, m.data_head == HOST)
    return m.data


def param_diff(param: torch.Tensor, mutable: bool = True) -> np.ndarray:
    """The host array of a learnable blob's diff (its gradient, zeros when it has none yet)."""
    if not _mirrored(param):
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        return param.grad.numpy()
    m = _mirror(param)
    if m.diff is None:
        m.diff = np.zeros(tuple(param.shape), np.float32)
        m.diff_head = DEVICE if param.grad is not None else HOST
    if m.diff_head == DEVICE:
        if param.grad is None:
            with _open(m.diff):
                m.diff[...] = 0
        else:
            d2h(param.grad, m.diff)
        m.diff_head = SYNCED
    if mutable:
        m.diff_head = HOST
    _writable(m.diff, m.diff_head == HOST)
    return m.diff


@torch.no_grad()
def push(params) -> None:
    """Before the device uses ``params``: copy the host arrays that are ahead (written through
    ``.data`` / ``.diff`` since the device last had them) to the device; nothing else."""
    for p in params:
        m = _get(p)
        if m is None:
            continue
        if m.data_head == HOST:
            p.copy_(h2d(m.data, p.device))
            m.data_head = SYNCED
            _writable(m.data, False)
        if m.diff_head == HOST:
            p.grad = h2d(m.diff, p.device)
            m.diff_head = SYNCED
            _writable(m.diff, False)


def device_wrote(params, data: bool = True, diff: bool = True) -> None:
    """After a device computation that may have changed ``params`` (their ``data``, their
    ``diff``): their host arrays are behind, read-only until the next access refreshes them."""
    for p in params:
        m = _get(p)
        if m is None:
            continue
        if data and m.data_head != UNINITIALIZED:
            m.data_head = DEVICE
            _writable(m.data, False)
        if diff and m.diff is not None:
            m.diff_head = DEVICE
            _writable(m.diff, False)


def reshaped(param: torch.Tensor) -> None:
    """After a parameter's reshape: its host mirror (if it has one) takes the new shape, the
    same arrays for the same count, new ones (filled from the device when used) otherwise."""
    m = _get(param)
    if m is None:
        return
    shape = tuple(param.shape)
    if m.data.size == param.numel():
        writable = m.data.flags.writeable
        _writable(m.data, True)   # (a view's flag can be set only over a writable base)
        m.data = m.data.reshape(shape)
        _writable(m.data, writable)
        m.diff = None
        m.diff_head = UNINITIALIZED
    else:
        _set(param, _Mirror(np.empty(shape, np.float32), None, DEVICE))


@torch.no_grad()
def place(params, device) -> None:
    """Move learnable blobs to ``device`` keeping their host arrays: to a device, a parameter's
    CPU memory becomes its host mirror, ahead of the device (so arrays taken in CPU mode stay the
    blob's, and what was written through them reaches the device at the next :func:`push`);
    back to the CPU, the host mirror, brought up to date, becomes the parameter's memory again."""
    device = torch.device(device)
    seen = set()
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        if separate(device):
            if not _mirrored(p):   # CPU -> device: the CPU memory is the mirror now, and ahead
                data = p.detach().numpy().view()   # (views: their flags can be set back)
                diff = None if p.grad is None else p.grad.numpy().view()
                _set(p, _Mirror(data, diff, HOST))
                p.data = torch.empty(tuple(p.shape), dtype=p.dtype, device=device)
                if diff is not None:
                    p.grad = torch.empty(tuple(p.shape), dtype=p.dtype, device=device)
            elif not _same(p.device, device):
                push([p])
                p.data = p.data.to(device)
                if p.grad is not None:
                    p.grad = p.grad.to(device)
        elif _mirrored(p):           # device -> CPU: the mirror is the memory again
            m = _pop(p)
            if m is None:
                p.data = p.data.to(device)
                if p.grad is not None:
                    p.grad = p.grad.to(device)
                continue
            if m.data_head == DEVICE:
                d2h(p, m.data)
            if m.diff is not None and m.diff_head == DEVICE:
                if p.grad is None:
                    with _open(m.diff):
                        m.diff[...] = 0
                else:
                    d2h(p.grad, m.diff)
            grad = p.grad
            _writable(m.data, True)
            p.data = torch.from_numpy(m.data)
            if m.diff is not None:
                _writable(m.diff, True)
                p.grad = torch.from_numpy(m.diff)
            elif grad is not None:
                p.grad = grad.to(device)
