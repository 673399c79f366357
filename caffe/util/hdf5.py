"""Caffe's HDF5 weights (``Net::ToHDF5`` / ``CopyTrainedLayersFromHDF5``), read and written with
h5py: a group ``data`` holding one group per layer (named as the layer) with one dataset per
learnable blob (``0``, ``1``, ...), float32 in the blob's shape; optionally a group ``diff`` laid
out the same way with the gradients. A blob shared from an earlier layer is stored only by
its owner, as Caffe does.
"""
from __future__ import annotations

import os

import numpy as np

from .. import CaffeError
from .files import atomic_path
from ..model_io import LayerBlobs


def _h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency
        raise CaffeError("HDF5 weights need the h5py package (pip install h5py)") from None
    return h5py


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with the HDF5 signature (Caffe's H5Fis_hdf5 test)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False


def save_hdf5(path: str | os.PathLike, layers: list[tuple[str, list[np.ndarray | None], list[np.ndarray] | None]]) -> None:
    """Write ``(layer name, blobs, diffs or None)`` for every layer of a net, in net order (layers
    without blobs too, as empty groups); a blob given as None (shared, not owned) is left out
    of ``data``. Atomic; a repeated layer name is an error, as HDF5 (and so Caffe) refuses it."""
    h5py = _h5py()
    names = [name for name, _, _ in layers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CaffeError(f"{path}: HDF5 weights name groups by layer, and layer name(s) {repeated} repeat")
    write_diff = any(diffs is not None for _, _, diffs in layers)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            for name, blobs, diffs in layers:
                g = data.create_group(name)
                for i, blob in enumerate(blobs):
                    if blob is not None:
                        g.create_dataset(str(i), data=np.asarray(blob, np.float32))
                if diff is not None:
                    d = diff.create_group(name)
                    for i, grad in enumerate(diffs or []):
                        d.create_dataset(str(i), data=np.asarray(grad, np.float32))


def _open(path: str | os.PathLike, what: str):
    """An HDF5 file opened for reading; a missing or unreadable one is a CaffeError naming it."""
    try:
        return _h5py().File(path, "r")
    except FileNotFoundError:
        raise CaffeError(f"{path}: no such file") from None
    except OSError as e:
        raise CaffeError(f"{path}: not {what} ({e})") from None


def load_hdf5(path: str | os.PathLike) -> list[LayerBlobs]:
    """The ``data`` group of an HDF5 weights file as LayerBlobs (layer type unknown: "").
    A layer's blobs run 0, 1, ... up to the first missing index (a shared blob is missing)."""
    with _open(path, "an HDF5 weights file") as f:
        if "data" not in f:
            raise CaffeError(f"{path}: has no 'data' group; not Caffe HDF5 weights")
        out = []
        for name, group in f["data"].items():
            blobs = []
            while str(len(blobs)) in group:
                blobs.append(np.asarray(group[str(len(blobs))], dtype=np.float32))
            out.append(LayerBlobs(name, "", blobs))
    return out


def save_solverstate_hdf5(path: str | os.PathLike, state) -> None:
    """Write a SolverState as BVLC's SGDSolver::SnapshotSolverStateToHDF5 does: scalar int
    datasets ``iter`` and ``current_step``, a string dataset ``learned_net``, and a group
    ``history`` with one float32 dataset per history blob (``0``, ``1``, ...). Atomic."""
    h5py = _h5py()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("iter", data=np.int32(state.iter))
            f.create_dataset("learned_net", data=np.bytes_(state.learned_net.encode()))
            f.create_dataset("current_step", data=np.int32(state.current_step))
            history = f.create_group("history")
            for i, h in enumerate(state.history):
                history.create_dataset(str(i), data=np.asarray(h, np.float32))


def load_solverstate_hdf5(path: str | os.PathLike):
    """Read an HDF5 solver state (SGDSolver::RestoreSolverStateFromHDF5's layout) as a
    SolverState; ``learned_net`` is optional there, as in Caffe."""
    from ..model_io import SolverState
    with _open(path, "an HDF5 solver state") as f:
        missing = [k for k in ("iter", "current_step", "history") if k not in f]
        if missing:
            raise CaffeError(f"{path}: has no {', '.join(missing)}; not a Caffe HDF5 solver state")
        learned = f["learned_net"][()] if "learned_net" in f else b""
        learned = learned.decode() if isinstance(learned, bytes) else str(learned)
        group, history = f["history"], []
        while str(len(history)) in group:
            history.append(np.asarray(group[str(len(history))], dtype=np.float32))
        return SolverState(int(f["iter"][()]), learned, history, int(f["current_step"][()]))
