"""Data-parallel training over processes with torch.distributed (started by torchrun).

Each process runs the solver on its own ``batch_size`` and its own share of the data; after
the ``iter_size`` passes the diffs are averaged over processes with one all-reduce (what
Caffe's multi-GPU P2PSync does: sum, then scale by 1/solver_count), so every process applies
the same update and the weights stay identical. Only rank 0 logs, tests and snapshots.
Backend: NCCL on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import CaffeError


@dataclass
class Dist:
    """This process's place: rank of world, and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"


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
        torch.cuda.set_device(ids[local])
        device = f"cuda:{ids[local]}"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, device)


def cleanup() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Replace each param's grad by its mean over processes (None counts as zeros)."""
    live = [p for p in params if p.requires_grad]
    if not live:
        return
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    dist.all_reduce(flat)
    flat.div_(world)
    offset = 0
    for p in live:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


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
