"""BVLC Caffe's file-reading data sources: Data (LMDB / LevelDB Datum records), ImageData (a
list of image files) and HDF5Data (a list of HDF5 files), each a torch Dataset indexed by stream
position (caffe.data) with Caffe's DataTransformer (caffe.data.base.CaffeTransform).
"""
from __future__ import annotations

import os
import re

import numpy as np

from .. import CaffeError
from ..util.lists import ListOrder
from .base import CaffeTransform, _Source, _batch_size, _rng


class DataSource(_Source):
    """Data: Datum records of an LMDB or LevelDB in key order, wrapping around. BVLC's DataLayer
    ignores ``rand_skip`` (only the older DataReader honoured it), and so do we; ``prefetch``
    is the loader's business. Tops: data (N x C x H x W), label (N) when a second top is named."""

    def __init__(self, lp, phase: str = "TRAIN", seed: int = 0):
        from ..util.db import DatumDB
        super().__init__(lp, phase, seed)
        p = lp.data_param
        self.batch_size = _batch_size(p.batch_size, self.where, "data_param")
        if not p.source:
            raise CaffeError(f"{self.where}: data_param.source (the database folder) is not set")
        self.transform = CaffeTransform(lp.transform_param, self.train, self.where)
        self.db = DatumDB(p.source, int(p.backend), self.where)

    def __len__(self) -> int:
        return len(self.db.keys)

    def _decode(self, key: bytes, raw: bytes):
        from ..util.db import decode_datum
        where = f"{self.where}: {self.db.source} record {key!r}"
        return decode_datum(raw, self.transform.force_color, self.transform.force_gray, where)

    def top_shapes(self) -> list[tuple]:
        """The first record's shape after the transform (Caffe's DataLayerSetUp)."""
        chw, _ = self._decode(*self.db.first())
        shapes = [(self.batch_size,) + self.transform.shape(*chw.shape), (self.batch_size,)]
        return shapes[:len(self.tops)]

    def item(self, pos: int):
        keys = self.db.keys
        key = keys[pos % len(keys)]
        chw, label = self._decode(key, self.db.get(key))
        data = self.transform(chw, _rng(self.seed, pos))
        return (data, np.float32(label))[:len(self.tops)] + (f"{self.db.source} record {key!r}",)


def _atoi(text: str) -> int:
    """C's atoi: an optional sign and the leading digits (0 when there are none)."""
    m = re.match(r"\s*([+-]?\d+)", text)
    return int(m.group(1)) if m else 0


class ImageDataSource(_Source):
    """ImageData: ``path label`` lines (caffe.util.lists; path relative to ``root_folder``), read
    as ReadImageToCVMat (BGR, or grey with ``is_color: false``; resized to new_height x
    new_width, bilinear, when both are set), transformed, with the label as top 1. The first
    ``rand() % rand_skip`` lines are skipped once at the start; with ``shuffle`` the lines
    are shuffled at the start and at every wrap-around. A line without a label gets
    atoi(path), as Caffe's parser does; a label that is not an integer is an error."""

    def __init__(self, lp, phase: str = "TRAIN", seed: int = 0):
        super().__init__(lp, phase, seed)
        p = lp.image_data_param
        self.batch_size = _batch_size(p.batch_size, self.where, "image_data_param")
        if bool(p.new_height) != bool(p.new_width):
            raise CaffeError(f"{self.where}: new_height and new_width must be set at the same time")
        if not p.source:
            raise CaffeError(f"{self.where}: image_data_param.source (the list file) is not set")
        self.transform = CaffeTransform(lp.transform_param, self.train, self.where)
        self.new_size, self.color = (int(p.new_height), int(p.new_width)), bool(p.is_color)
        lines = self.read_lines(p.source, last_space=True)
        self.entries = []
        for line in lines:
            if line.label is not None and not re.fullmatch(r"[+-]?\d+", line.label):
                raise CaffeError(f"{self.where}: {line.where}: the label must be an integer, got {line.label!r}")
            path = p.root_folder + line.image
            if not os.path.isfile(path):
                raise CaffeError(f"{self.where}: {line.where}: {path} does not exist")
            label = int(line.label) if line.label is not None else _atoi(line.image)
            self.entries.append((line.where, path, label))
        self.item_index = ListOrder(len(self.entries), p.shuffle, self.seed, p.rand_skip, self.where)

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, index: int) -> np.ndarray:
        import cv2
        from ..util.images import read_image
        where, path, _ = self.entries[index]
        try:
            img = read_image(path, color=self.color)
        except CaffeError as e:
            raise CaffeError(f"{self.where}: {where}: {e}") from None
        nh, nw = self.new_size
        if nh and nw:
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, -1)
        return img.transpose(2, 0, 1)

    def top_shapes(self) -> list[tuple]:
        """The first image's shape after the transform (Caffe's DataLayerSetUp)."""
        chw = self._read(self.item_index(0))
        return [(self.batch_size,) + self.transform.shape(*chw.shape), (self.batch_size,)]

    def item(self, pos: int):
        index = self.item_index(pos)
        data = self.transform(self._read(index), _rng(self.seed, pos))
        return data, np.float32(self.entries[index][2]), self.entries[index][0]


class HDF5Source(_Source):
    """HDF5Data: the files listed in ``source`` (whitespace-separated names, relative to the
    working directory), each holding one dataset per top (named as the top, any float or
    integer type, read as float32, the same row count in all of a file's datasets). Rows
    are read in order across files, wrapping around; with ``shuffle`` the file order is
    shuffled at the start and after each pass over the files, and a file's rows each time
    it is read. No transform_param (as Caffe: HDF5 data is generic)."""

    def __init__(self, lp, phase: str = "TRAIN", seed: int = 0):
        from ..util.hdf5 import _h5py
        super().__init__(lp, phase, seed)
        p = lp.hdf5_data_param
        if lp.HasField("transform_param"):
            raise CaffeError(f"{self.where}: HDF5Data does not transform data; remove transform_param")
        self.batch_size = _batch_size(p.batch_size, self.where, "hdf5_data_param")
        try:
            with open(p.source, encoding="utf-8") as f:
                self.files = f.read().split()
        except OSError as e:
            raise CaffeError(f"{self.where}: failed to open source file {p.source}: {e.strerror or e}") from None
        if not self.files:
            raise CaffeError(f"{self.where}: must have at least 1 HDF5 filename listed in {p.source}")
        self.shuffle = bool(p.shuffle)
        h5py = _h5py()
        self.rows, self.dims = [], None
        for name in self.files:
            try:
                with h5py.File(name, "r") as f:
                    shapes = [self._dataset(f, name, t).shape for t in self.tops]
            except OSError as e:
                raise CaffeError(f"{self.where}: failed opening HDF5 file {name}: {e}") from None
            if any(len(s) < 1 for s in shapes):
                raise CaffeError(f"{self.where}: {name}: every dataset needs at least 1 axis")
            if len({s[0] for s in shapes}) > 1:
                raise CaffeError(f"{self.where}: {name}: datasets {self.tops} have different row counts "
                                 f"{[s[0] for s in shapes]}")
            dims = [tuple(s[1:]) for s in shapes]
            if self.dims is None:
                self.dims = dims
            elif dims != self.dims:
                raise CaffeError(f"{self.where}: {name}: rows of shape {dims} differ from {self.files[0]}'s "
                                 f"{self.dims} (one shape per top for all files)")
            self.rows.append(int(shapes[0][0]))
        self.total = sum(self.rows)
        if self.total == 0:
            raise CaffeError(f"{self.where}: the HDF5 files of {p.source} hold no rows")
        self._cache: tuple[str, list[np.ndarray]] | None = None   # the file read last, whole (as Caffe)
        self._perm: tuple[tuple[int, int], np.ndarray] | None = None

    def _dataset(self, f, name: str, top: str):
        ds = f.get(top)
        if ds is None or not hasattr(ds, "dtype"):
            raise CaffeError(f"{self.where}: failed to find HDF5 dataset {top!r} in {name}")
        if ds.dtype.kind not in "fiu":
            raise CaffeError(f"{self.where}: {name}: dataset {top!r} is {ds.dtype}; expected float or integer")
        return ds

    def __len__(self) -> int:
        return self.total

    def locate(self, pos: int) -> tuple[int, int]:
        """(file index, row) stream position ``pos`` reads."""
        epoch, k = divmod(pos, self.total)
        order = np.arange(len(self.files))
        if self.shuffle:
            order = _rng(self.seed, epoch, 0xF11E).permutation(len(self.files))
        for turn, f in enumerate(order):
            if k < self.rows[f]:
                if self.shuffle:
                    if self._perm is None or self._perm[0] != (epoch, turn):
                        self._perm = ((epoch, turn), _rng(self.seed, epoch, turn, 0x5EED).permutation(self.rows[f]))
                    k = int(self._perm[1][k])
                return int(f), k
            k -= self.rows[f]
        raise AssertionError("position past the last row")  # pragma: no cover

    def top_shapes(self) -> list[tuple]:
        """(batch_size,) + each dataset's row shape."""
        return [(self.batch_size,) + d for d in self.dims]

    def item(self, pos: int):
        f, row = self.locate(pos)
        name = self.files[f]
        if self._cache is None or self._cache[0] != name:  # Caffe loads a whole file at a time
            from ..util.hdf5 import _h5py
            try:
                with _h5py().File(name, "r") as h5:
                    self._cache = (name, [np.asarray(self._dataset(h5, name, t), np.float32) for t in self.tops])
            except OSError as e:
                raise CaffeError(f"{self.where}: failed opening HDF5 file {name}: {e}") from None
        return tuple(a[row] for a in self._cache[1]) + (f"{name} row {row}",)
