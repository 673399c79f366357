"""pycaffe's process-level names that BVLC's ``python/train.py`` uses: ``Timer``, ``init_log``
/ ``log``, ``solver_count`` / ``solver_rank`` / ``set_multiprocess`` (Caffe's singleton) and
``NCCL``, data-parallel training with one process per device.

``NCCL`` is torch.distributed underneath (NCCL on CUDA, gloo on the CPU). As BVLC's:
``uid = caffe.NCCL.new_uid()`` in the parent; in each process ``set_solver_count(n)``,
``set_solver_rank(r)``, ``solver = caffe.SGDSolver(...)``, ``nccl = caffe.NCCL(solver, uid)``,
``nccl.bcast()`` (rank 0's weights everywhere), ``solver.add_callback(nccl)`` (diffs summed
over the processes and scaled by 1/n before each update) and, with the solver's
``layer_wise_reduce`` (Caffe's default), ``solver.net.after_backward(nccl)`` (each layer's diffs
reduced as soon as its backward is done). A solver of rank > 0 neither tests, snapshots nor
logs (Caffe's root_solver); each process's data is its own (a Python data layer may read
``caffe.solver_rank()``).
"""
from __future__ import annotations

import atexit
import sys
import time

import torch

from .. import CaffeError

_STATE = {"solver_count": 1, "solver_rank": 0, "multiprocess": False, "minloglevel": 0}


# ------------------------------------------------------------------ Caffe's singleton
def solver_count() -> int:
    """The number of solvers (processes) training together (Caffe::solver_count)."""
    return _STATE["solver_count"]


def set_solver_count(count: int) -> None:
    """Set Caffe::solver_count (before building the solver)."""
    if int(count) < 1:
        raise CaffeError(f"set_solver_count: needs at least 1 solver, got {count}")
    _STATE["solver_count"] = int(count)


def solver_rank() -> int:
    """This process's solver rank; 0 is the root solver that tests, snapshots and logs."""
    return _STATE["solver_rank"]


def set_solver_rank(rank: int) -> None:
    """Set Caffe::solver_rank (before building the solver)."""
    if int(rank) < 0:
        raise CaffeError(f"set_solver_rank: a rank is >= 0, got {rank}")
    _STATE["solver_rank"] = int(rank)


def set_multiprocess(value: bool) -> None:
    """Caffe::set_multiprocess: the solvers run in separate processes (train.py sets it)."""
    _STATE["multiprocess"] = bool(value)


def multiprocess() -> bool:
    """Caffe::multiprocess."""
    return _STATE["multiprocess"]


# ------------------------------------------------------------------ logging and timing
def init_log(level: int = 0, stderr: bool = True) -> None:
    """Caffe's init_log([level[, stderr]]): log lines of severity below ``level`` (0 INFO,
    1 WARNING, 2 ERROR) are dropped. Lines go to stderr, as the ``caffe`` command's do."""
    _STATE["minloglevel"] = int(level)


def log(message: str) -> None:
    """LOG(INFO) << message: one glog-formatted line on stderr (unless init_log raised the level)."""
    if _STATE["minloglevel"] > 0:
        return
    from ..solvers.solver import CaffeLog
    CaffeLog(None, stderr=True)("_caffe.cpp:68", str(message))


class Timer:
    """Caffe's Timer: ``start()``, ``stop()``, ``ms`` (the last start-to-stop time; reading it
    while running stops it; 0 before the first run). In GPU mode the device is synchronised
    at start and stop, as Caffe's CUDA events measure device time."""

    def __init__(self):
        self._start = self._elapsed = None
        self.running = False

    def _now(self) -> float:
        from ..common import _MODE
        if _MODE["gpu"] and torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        """Start timing (again)."""
        if not self.running:
            self._start = self._now()
            self.running = True

    def stop(self) -> None:
        """Stop timing; ``ms`` then holds the time since ``start``."""
        if self.running:
            self._elapsed = self._now() - self._start
            self.running = False

    @property
    def ms(self) -> float:
        """Milliseconds between the last start and stop."""
        if self._start is None:
            return 0.0
        self.stop()
        return self._elapsed * 1000.0

    @property
    def seconds(self) -> float:
        """The same in seconds."""
        return self.ms / 1000.0


# ------------------------------------------------------------------ NCCL
class NCCL:
    """``NCCL(solver, uid)``: joins the group of ``solver_count()`` processes named by ``uid``
    as rank ``solver_rank()``. ``bcast()``, and use as a solver callback (``add_callback(nccl)``)
    and a net callback (``net.after_backward(nccl)``) as BVLC's."""

    def __init__(self, solver, uid):
        import torch.distributed as dist
        from ..common import _MODE
        self.solver = solver
        self.count, self.rank = solver_count(), solver_rank()
        if not self.rank < self.count:
            raise CaffeError(f"NCCL: solver rank {self.rank} is not below solver_count {self.count}; "
                             f"call caffe.set_solver_count and caffe.set_solver_rank first")
        if isinstance(uid, bytes):
            uid = uid.decode()
        if self.count > 1 and not dist.is_initialized():
            backend = "nccl" if _MODE["gpu"] else "gloo"
            dist.init_process_group(backend, init_method=str(uid), world_size=self.count, rank=self.rank)
            atexit.register(_leave)

    @staticmethod
    def new_uid() -> bytes:
        """A new group id for NCCL(solver, uid) in each process (bytes, as BVLC's on Python 3):
        a free local TCP port where the processes meet (one machine, as BVLC's NCCL)."""
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"tcp://127.0.0.1:{port}".encode()

    def _params(self) -> list:
        return [p.param for p in self.solver._loop.params]

    @torch.no_grad()
    def _reduce(self, tensors) -> None:
        import torch.distributed as dist
        for p in tensors:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.mul_(1.0 / self.count)

    @torch.no_grad()
    def bcast(self) -> None:
        """Give every process the root solver's weights."""
        if self.count == 1:
            return
        import torch.distributed as dist
        from ..syncedmem import device_wrote
        params = self._params()
        self.solver.net._sync_in()
        for p in params:
            dist.broadcast(p.data, 0)
        device_wrote(params, diff=False)

    # Solver::Callback
    def on_start(self) -> None:
        """Nothing before forward (BVLC's NCCL::on_start is empty)."""

    def on_gradients_ready(self) -> None:
        """Sum the diffs over the processes and scale them by 1/solver_count (unless each
        layer's were reduced already, with ``layer_wise_reduce``)."""
        if self.count == 1 or self._layer_wise:
            return
        from ..syncedmem import device_wrote, push
        params = self._params()
        push(params)
        self._reduce(params)
        device_wrote(params, data=False)

    @property
    def _layer_wise(self) -> bool:
        return bool(self.solver.param.layer_wise_reduce) and self._net_callback

    _net_callback = False

    # Net::Callback (after_backward of the train net)
    def __call__(self, layer: int) -> None:
        """Reduce layer ``layer``'s learnable diffs (layer-wise reduce)."""
        if not self.solver.param.layer_wise_reduce:
            raise CaffeError("NCCL as a net callback needs the solver's layer_wise_reduce: true")
        self._net_callback = True
        if self.count == 1:
            return
        engine = self.solver.net._net
        if len(engine._owned) != sum(len(layer_.blobs) for layer_ in engine.layers):
            raise CaffeError("Layer-wise reduce is not supported for nets with shared weights.")
        self._reduce(list(engine.layers[layer].blobs))


def _leave() -> None:
    """At exit: leave the process group."""
    import torch.distributed as dist
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:   # the process is ending; say why the group could not be left
            print(f"warning: leaving the process group failed: {e}", file=sys.stderr)
