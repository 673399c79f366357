"""Devices and data-parallel training over processes with torch.distributed.

``device_query`` describes a GPU
as Caffe::DeviceQuery does. Several processes are started by torchrun or by
caffe.tool.training's self-spawn.

Each process runs the solver on its own ``batch_size`` and its own share of the data; the net
runs inside DistributedDataParallel (caffe.solvers.solver), which averages the diffs over processes
while backward runs, in the last of the ``iter_size`` passes (``no_sync`` before it) — what
Caffe's multi-GPU P2PSync does (sum, then scale by 1/solver_count) — so every process applies
the same update and the weights stay identical. Only rank 0 logs, tests and snapshots.
Backend: NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import CaffeError
from ..common import use_cuda_device


@dataclass
class Dist:
    """This process's place: rank of world, and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"


def device_query(gpu: int) -> list[str]:
    """Caffe::DeviceQuery's lines for one GPU (the properties CUDA reports through PyTorch)."""
    p = torch.cuda.get_device_properties(gpu)
    rows = [("Device id", gpu), ("Major revision number", p.major), ("Minor revision number", p.minor),
            ("Name", p.name), ("Total global memory", p.total_memory)]
    for label, attr in (("Total shared memory per block", "shared_memory_per_block"),
                        ("Total registers per multiprocessor", "regs_per_multiprocessor"),
                        ("Warp size", "warp_size"),
                        ("Maximum threads per multiprocessor", "max_threads_per_multi_processor"),
                        ("L2 cache size", "L2_cache_size")):
        if hasattr(p, attr):
            rows.append((label, getattr(p, attr)))
    rows.append(("Number of multiprocessors", p.multi_processor_count))
    return [f"{label + ':':<31}{value}" for label, value in rows]


def launched() -> bool:
    """True when started by torchrun (or another launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(use_cuda: bool, gpu_ids: list[int] | None = None) -> Dist:
    """Join the process group when launched with several processes; pick the device.

    On CUDA process ``local_rank`` uses ``gpu_ids[local_rank]`` (all visible GPUs when None).
    """
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = "cpu"
    if use_cuda:
        if not torch.cuda.is_available():
            raise CaffeError("--gpu was given but CUDA is not available (use --cpu)")
        ids = gpu_ids if gpu_ids is not None else list(range(torch.cuda.device_count()))
        if local >= len(ids):
            raise CaffeError(f"process {local} has no GPU (GPUs: {ids})")
        device = use_cuda_device(ids[local])
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, device)


def cleanup(success: bool = True) -> None:
    """Leave the process group the same way on every exit path. After a successful run every
    process first waits at a barrier, so none tears down gloo's connections (and their
    threads) while another still talks over them; after a failure there is no barrier (the
    other processes may never arrive). Then the group is destroyed. Call it after every
    DistributedDataParallel wrapper over the group is gone (its reducer holds the group)."""
    if not dist.is_initialized():
        return
    try:
        if success:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def broadcast_params(tensors: list[torch.Tensor]) -> None:
    """Give every process rank 0's values (initial weights, restored history)."""
    for t in tensors:
        dist.broadcast(t.data, 0)


def agree_request(request: str | None, device) -> str | None:
    """Combine each process's signal request (stop beats snapshot beats none)."""
    code = {None: 0, "snapshot": 1, "stop": 2}[request]
    t = torch.tensor([code], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return {0: None, 1: "snapshot", 2: "stop"}[int(t.item())]


def broadcast_int(value: int, device) -> int:
    """Rank 0's ``value`` on every process (e.g. a seed drawn at random)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())
