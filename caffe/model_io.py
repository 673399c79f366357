"""Fast binary IO for Caffe weights (.caffemodel) and solver snapshots (.solverstate).

A VGG-16 caffemodel is ~500 MB of float32 in protobuf. Going through the generated
classes would turn every float into a Python object, so this module walks the protobuf
wire format itself: the packed ``data`` (field 5, float32) and ``double_data`` (field 8)
bytes of each BlobProto become arrays with ``np.frombuffer`` (unpacked encodings are
accepted too), and only the small rest of each layer / blob is parsed with the generated
classes. Files are written as BVLC Caffe writes them (V2 NetParameter, BlobShape dims),
atomically.
"""
from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from google.protobuf.message import DecodeError

from . import CaffeError
from .util.files import atomic_path
from .prototxt import V1_TYPE_NAMES
from .proto import caffe_pb2 as pb

# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# NetParameter.layer (V2) / .layers (V1); the blobs field inside each; V1's V0 `layer`.
_NET_LAYER, _NET_LAYERS = 100, 2
_V2_BLOBS, _V1_BLOBS, _V1_V0LAYER = 7, 6, 1
_V2_HEADER, _V1_HEADER = (1, 2), (4, 5)  # (name, type) in LayerParameter / V1LayerParameter
# BlobProto: data / double_data (kept), diff / double_diff (skipped), shape.
_DATA, _DIFF, _DOUBLE_DATA, _DOUBLE_DIFF, _SHAPE = 5, 6, 8, 9, 7
# SolverState.history.
_HISTORY = 3
_VALUE_WIRE = {_DATA: (_I32, 4, "<f4"), _DOUBLE_DATA: (_I64, 8, "<f8")}


@dataclass
class LayerBlobs:
    """One layer's learnable blobs, as stored."""

    name: str
    type: str  # V2 type string, also for V1 files ("Convolution", "InnerProduct", ...)
    blobs: list[np.ndarray]  # float32 in the stored shape (legacy blobs: num, channels, h, w)


@dataclass
class SolverState:
    """Caffe's SolverState: where training stopped and the SGD momentum history."""

    iter: int
    learned_net: str
    history: list[np.ndarray]  # in the order of the net's learnable params
    current_step: int = 0


class _Corrupt(Exception):
    """Raised by the wire walker; turned into a CaffeError naming the file."""


# --------------------------------------------------------------------------- reading

def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("varint too long")


def _field(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int]:
    """Read the field at ``pos``: ``(number, wire_type, value_start, value_end)``."""
    key, vstart = _varint(buf, pos, end)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise _Corrupt(f"field number 0 at byte {pos}")
    if wire == _VARINT:
        _, vend = _varint(buf, vstart, end)
    elif wire == _I64:
        vend = vstart + 8
    elif wire == _I32:
        vend = vstart + 4
    elif wire == _LEN:
        length, vstart = _varint(buf, vstart, end)
        vend = vstart + length
    else:
        raise _Corrupt(f"unsupported wire type {wire} at byte {pos}")
    if vend > end:
        raise _Corrupt(f"field {number} runs past the end of its message")
    return number, wire, vstart, vend


def _parse_blob(buf: bytes, start: int, end: int) -> np.ndarray:
    """Decode one BlobProto into a float32 array of its stored shape."""
    chunks: list[np.ndarray] = []
    rest = bytearray()  # shape / legacy dims, parsed with the generated class
    pos = start
    while pos < end:
        number, wire, vstart, vend = _field(buf, pos, end)
        if number in _VALUE_WIRE:
            elem_wire, width, dtype = _VALUE_WIRE[number]
            if wire == _LEN:  # packed (what Caffe writes)
                if (vend - vstart) % width:
                    raise _Corrupt("packed blob data is not a whole number of values")
                chunks.append(np.frombuffer(buf, dtype, (vend - vstart) // width, vstart))
                pos = vend
                continue
            if wire != elem_wire:
                raise _Corrupt(f"blob field {number} has wire type {wire}")
            # Unpacked: (one tag byte, value) repeated; take the whole run in one go.
            step = width + 1
            n = (end - pos) // step
            rows = np.frombuffer(buf, np.uint8, n * step, pos).reshape(n, step)
            bad = np.flatnonzero(rows[:, 0] != buf[pos])
            n = int(bad[0]) if len(bad) else n
            chunks.append(np.ascontiguousarray(rows[:n, 1:]).view(dtype).reshape(-1))
            pos += n * step
            continue
        if number not in (_DIFF, _DOUBLE_DIFF):
            rest += buf[pos:vend]
        pos = vend
    try:
        meta = pb.BlobProto.FromString(bytes(rest))
    except DecodeError as e:
        raise _Corrupt(f"bad blob header: {e}") from None
    if meta.HasField("shape"):
        shape = tuple(int(d) for d in meta.shape.dim)
    else:
        shape = (meta.num, meta.channels, meta.height, meta.width)
    if any(d < 0 for d in shape):
        raise _Corrupt(f"blob has a negative dimension {shape}")
    data = (np.concatenate(chunks) if len(chunks) != 1 else chunks[0]).astype(np.float32)
    if data.size != int(np.prod(shape, dtype=np.int64)):
        raise _Corrupt(f"blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _top_fields(buf) -> Iterator[tuple[int, int, int, int, int]]:
    """The top-level fields of a message: (number, wire type, start, value start, value end)."""
    pos, end = 0, len(buf)
    while pos < end:
        number, wire, vstart, vend = _field(buf, pos, end)
        yield number, wire, pos, vstart, vend
        pos = vend


@contextlib.contextmanager
def _mapped(path: str | os.PathLike) -> Iterator[tuple[bytes | mmap.mmap, str]]:
    """The file's bytes, memory-mapped: blob data is copied once, from the page cache
    straight into the (aligned, writable) result arrays."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            empty = os.fstat(f.fileno()).st_size == 0  # mmap refuses empty files
            buf = None if empty else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CaffeError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CaffeError(f"{path}: cannot read: {e}") from None
    if buf is None:
        yield b"", path
        return
    try:
        yield buf, path
    finally:
        with contextlib.suppress(BufferError):  # arrays still viewing it: GC closes it later
            buf.close()


def _check_not_hdf5(buf: bytes, path: str) -> None:
    if buf[:8] == b"\x89HDF\r\n\x1a\n":
        raise CaffeError(f"{path}: is an HDF5 file; HDF5 weights load through Net.copy_from / --weights, "
                         "an HDF5 solver state is read by its name's .h5 suffix, as Caffe does (*.solverstate.h5)")


def _parse_layer(buf: bytes, start: int, end: int, v1: bool) -> LayerBlobs:
    blobs_field = _V1_BLOBS if v1 else _V2_BLOBS
    # Only name and type are parsed from the rest: other forks' layer parameters may
    # reuse BVLC's numbers with other types, and weights do not need them.
    header_fields = _V1_HEADER if v1 else _V2_HEADER
    blobs: list[np.ndarray] = []
    rest = bytearray()
    pos = start
    while pos < end:
        number, wire, vstart, vend = _field(buf, pos, end)
        if number == blobs_field and wire == _LEN:
            blobs.append(_parse_blob(buf, vstart, vend))
        elif v1 and number == _V1_V0LAYER:
            raise _Corrupt("V0 layer definitions (pre-2014 caffemodels) are not supported")
        elif number in header_fields:
            rest += buf[pos:vend]
        pos = vend
    try:
        if v1:
            meta = pb.V1LayerParameter.FromString(bytes(rest))
            type_name = V1_TYPE_NAMES.get(meta.type, "")
        else:
            meta = pb.LayerParameter.FromString(bytes(rest))
            type_name = meta.type
    except DecodeError as e:
        raise _Corrupt(f"bad layer header: {e}") from None
    return LayerBlobs(meta.name, type_name, blobs)


def load_caffemodel(path: str | os.PathLike) -> list[LayerBlobs]:
    """Read the learnable blobs of every layer of a V2 or V1 binary caffemodel.

    Layers without blobs are skipped. Blobs keep their stored shape: BlobShape dims, or
    (num, channels, height, width) for legacy blobs such as VGG_ILSVRC_16_layers'.
    """
    layers: list[LayerBlobs] = []
    seen = 0
    with _mapped(path) as (buf, path):
        _check_not_hdf5(buf, path)
        error = None
        try:
            for number, wire, _, vstart, vend in _top_fields(buf):
                if number in (_NET_LAYER, _NET_LAYERS) and wire == _LEN:
                    seen += 1
                    layer = _parse_layer(buf, vstart, vend, v1=number == _NET_LAYERS)
                    if layer.blobs:
                        layers.append(layer)
        except _Corrupt as e:  # raised below, once the traceback (and its views) is gone
            error = f"{path}: truncated or corrupt caffemodel (layer {seen}): {e}"
        if error:
            raise CaffeError(error)
    if not seen:
        raise CaffeError(f"{path}: holds no layers; not a binary caffemodel?")
    return layers


def load_solverstate(path: str | os.PathLike) -> SolverState:
    """Read a binary .solverstate (iteration, learned_net, momentum history)."""
    history: list[np.ndarray] = []
    rest = bytearray()
    with _mapped(path) as (buf, path):
        _check_not_hdf5(buf, path)
        error = None
        try:
            for number, wire, start, vstart, vend in _top_fields(buf):
                if number == _HISTORY and wire == _LEN:
                    history.append(_parse_blob(buf, vstart, vend))
                else:
                    rest += buf[start:vend]
            meta = pb.SolverState.FromString(bytes(rest))
        except (_Corrupt, DecodeError) as e:
            error = f"{path}: truncated or corrupt solverstate: {e}"
        if error:
            raise CaffeError(error)
    if not meta.HasField("iter"):
        raise CaffeError(f"{path}: has no iteration number; not a binary solverstate?")
    return SolverState(int(meta.iter), meta.learned_net, history, int(meta.current_step))


# --------------------------------------------------------------------------- writing

def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_prefix(number: int, length: int) -> bytes:
    return _enc_varint((number << 3) | _LEN) + _enc_varint(length)


def _blob_parts(array: np.ndarray) -> tuple[list[bytes | memoryview], int]:
    """A BlobProto as byte pieces (data packed float32, then shape dims) and its length."""
    array = np.asarray(array)
    data = np.ascontiguousarray(array, dtype="<f4").reshape(-1)
    shape = pb.BlobShape(dim=[int(d) for d in array.shape]).SerializeToString()
    head = _len_prefix(_DATA, data.nbytes)
    tail = _len_prefix(_SHAPE, len(shape)) + shape
    parts = [head, memoryview(data).cast("B"), tail]
    return parts, len(head) + data.nbytes + len(tail)


def _write_parts(path: str | os.PathLike, parts: list[bytes | memoryview]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for part in parts:
            f.write(part)


def save_caffemodel(path: str | os.PathLike, layers: list[LayerBlobs], net_name: str = "") -> None:
    """Write a V2 binary NetParameter (one ``layer`` with name, type, blobs per entry)."""
    parts: list[bytes | memoryview] = []
    if net_name:
        parts.append(pb.NetParameter(name=net_name).SerializeToString())
    for layer in layers:
        head = pb.LayerParameter(name=layer.name, type=layer.type).SerializeToString()
        body: list[bytes | memoryview] = [head]
        size = len(head)
        for blob in layer.blobs:
            blob_parts, blob_len = _blob_parts(blob)
            prefix = _len_prefix(_V2_BLOBS, blob_len)
            body += [prefix, *blob_parts]
            size += len(prefix) + blob_len
        parts += [_len_prefix(_NET_LAYER, size), *body]
    _write_parts(path, parts)


def save_solverstate(path: str | os.PathLike, state: SolverState) -> None:
    """Write a binary SolverState that BVLC Caffe can resume from."""
    meta = pb.SolverState(iter=state.iter, learned_net=state.learned_net,
                          current_step=state.current_step)
    parts: list[bytes | memoryview] = [meta.SerializeToString()]
    for blob in state.history:
        blob_parts, blob_len = _blob_parts(blob)
        parts += [_len_prefix(_HISTORY, blob_len), *blob_parts]
    _write_parts(path, parts)
