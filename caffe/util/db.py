"""Caffe's Datum databases (util/db_lmdb.cpp, util/db_leveldb.cpp) and Datum decoding (util/io.cpp).

A Data layer reads ``data_param.source``, an LMDB folder (the PyPI ``lmdb`` package) or a
LevelDB folder (``plyvel``), record after record in key order (bytewise, the order both
databases keep), wrapping around at the end. Each value is a serialized ``caffe.Datum``:
``channels`` x ``height`` x ``width`` bytes in ``data`` (C x H x W order) or as many
``float_data``, or, with ``encoded``, an image file's bytes that OpenCV decodes as Caffe's
DecodeDatumToCVMat does (``force_color`` / ``force_gray``; else unchanged, as
DecodeDatumToCVMatNative). The packages are imported only when a database is opened; the
handle is opened once per process, so DataLoader workers each open their own LMDB handle.
A LevelDB can be open in one process only: its source is read in the main process
(``in_process``), and several training processes (DDP) cannot share one; use LMDB there.
"""
from __future__ import annotations

import os

import numpy as np

from .. import CaffeError

LEVELDB, LMDB = 0, 1   # DataParameter.DB
_PACKAGES = {LMDB: ("lmdb", "LMDB"), LEVELDB: ("plyvel", "LevelDB")}


def _import(backend: int, where: str):
    module, name = _PACKAGES[backend]
    try:
        return __import__(module)
    except ImportError:
        raise CaffeError(f"{where}: backend {name.upper()} needs the {module} package "
                         f"(pip install {module})") from None


_OPEN: dict = {}   # (pid, real path, backend) -> handle: both packages refuse a second open in a process


def _open(source: str, backend: int, where: str, name: str):
    """The process's handle of a database, opened on first use. In a forked child (a
    DataLoader worker) an LMDB handle inherited from the parent is closed first: py-lmdb
    refuses a second open while it is registered, and LMDB handles must not cross a fork."""
    pid = os.getpid()
    for old in [k for k in _OPEN if k[0] != pid]:
        handle = _OPEN.pop(old)
        if old[2] == LMDB:
            handle.close()
    key = (pid, os.path.realpath(source), backend)
    if key not in _OPEN:
        mod = _import(backend, where)
        try:
            if backend == LMDB:
                _OPEN[key] = mod.open(source, readonly=True, lock=False, readahead=False)
            else:
                _OPEN[key] = mod.DB(source, create_if_missing=False)
        except Exception as e:  # the packages' own error classes
            hint = " (a LevelDB opens in one process at a time; use LMDB for several)" if backend == LEVELDB else ""
            raise CaffeError(f"{where}: cannot open {name} {source}: {e}{hint}") from None
    return _OPEN[key]


class DatumDB:
    """Read-only access to one LMDB or LevelDB by record position (keys in key order)."""

    def __init__(self, source: str, backend: int, where: str):
        if backend not in _PACKAGES:
            raise CaffeError(f"{where}: unknown database backend {backend}")
        self.source, self.backend, self.where = source, backend, where
        self.name = _PACKAGES[backend][1]
        _import(backend, where)
        if not os.path.isdir(source):
            raise CaffeError(f"{where}: data_param.source {source!r} is not a {self.name} folder"
                             + ("" if os.path.isabs(source) else f" (relative to {os.getcwd()})"))
        self._handle, self._pid, self._keys = None, None, None
        self.in_process = backend == LEVELDB

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None   # each process opens its own
        return state

    def _db(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = _open(self.source, self.backend, self.where, self.name), os.getpid()
        return self._handle

    def first(self) -> tuple[bytes, bytes]:
        """(key, value) of the first record (Caffe's cursor after SeekToFirst)."""
        db = self._db()
        if self.backend == LMDB:
            with db.begin(buffers=False) as txn:
                cursor = txn.cursor()
                if cursor.first():
                    return bytes(cursor.key()), bytes(cursor.value())
        else:
            for key, value in db.iterator():
                return key, value
        raise CaffeError(f"{self.where}: {self.name} {self.source} holds no records")

    @property
    def keys(self) -> list[bytes]:
        """Every key, in the database's order."""
        if self._keys is None:
            db = self._db()
            if self.backend == LMDB:
                with db.begin(buffers=False) as txn:
                    self._keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
            else:
                self._keys = list(db.iterator(include_value=False))
            if not self._keys:
                raise CaffeError(f"{self.where}: {self.name} {self.source} holds no records")
        return self._keys

    def get(self, key: bytes) -> bytes:
        """The value stored under ``key``."""
        db = self._db()
        if self.backend == LMDB:
            with db.begin(buffers=False) as txn:
                value = txn.get(key)
        else:
            value = db.get(key)
        if value is None:
            raise CaffeError(f"{self.where}: key {key!r} vanished from {self.source}")
        return bytes(value)


def decode_datum(raw: bytes, force_color: bool, force_gray: bool, where: str) -> tuple[np.ndarray, int]:
    """A serialized Datum -> (C x H x W array: uint8, or float32 from ``float_data``; label)."""
    from ..proto import caffe_pb2
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(raw)
    except Exception:
        raise CaffeError(f"{where}: the record is not a caffe.Datum") from None
    if datum.encoded:
        import cv2
        if force_color and force_gray:
            raise CaffeError(f"{where}: cannot set both force_color and force_gray")
        flag = cv2.IMREAD_COLOR if force_color else cv2.IMREAD_GRAYSCALE if force_gray else cv2.IMREAD_UNCHANGED
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flag) if datum.data else None
        if img is None:
            raise CaffeError(f"{where}: could not decode the encoded image of the Datum")
        if img.dtype != np.uint8:
            raise CaffeError(f"{where}: the encoded image is {img.dtype}; Caffe takes 8-bit images only")
        img = img[:, :, None] if img.ndim == 2 else img
        return np.ascontiguousarray(img.transpose(2, 0, 1)), int(datum.label)
    c, h, w = int(datum.channels), int(datum.height), int(datum.width)
    if c <= 0:
        raise CaffeError(f"{where}: the Datum has {c} channels")
    n = c * h * w
    if datum.data:
        if len(datum.data) != n:
            raise CaffeError(f"{where}: the Datum says {c}x{h}x{w} but holds {len(datum.data)} bytes")
        arr = np.frombuffer(datum.data, np.uint8)
    else:
        if len(datum.float_data) != n:
            raise CaffeError(f"{where}: the Datum says {c}x{h}x{w} but holds {len(datum.float_data)} float_data")
        arr = np.asarray(datum.float_data, np.float32)
    return arr.reshape(c, h, w), int(datum.label)
