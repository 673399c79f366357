"""Process-wide settings, as BVLC's common.cpp (Caffe::set_mode, set_device) and the one rule
every ``--gpu`` flag follows (caffe.cpp's get_gpus): pycaffe's mode and device, ``gpu_ids`` for
a flag, ``device_for`` for one GPU id, ``use_cuda_device`` to make one current.
"""
from __future__ import annotations

import torch

from . import CaffeError

_MODE = {"gpu": False, "device_id": 0}


def set_mode_cpu() -> None:
    """Run nets on the CPU (the default)."""
    _MODE["gpu"] = False


def set_mode_gpu() -> None:
    """Run nets on the CUDA device chosen by set_device (default 0)."""
    if not torch.cuda.is_available():
        raise CaffeError("set_mode_gpu: no CUDA device is available to torch on this machine")
    _MODE["gpu"] = True


def set_device(device_id: int) -> None:
    """Choose the CUDA device used in GPU mode."""
    if torch.cuda.is_available() and not 0 <= int(device_id) < torch.cuda.device_count():
        raise CaffeError(f"set_device: no CUDA device {device_id} ({torch.cuda.device_count()} present)")
    _MODE["device_id"] = int(device_id)


def device() -> torch.device:
    """The torch device of the current mode."""
    return torch.device(f"cuda:{_MODE['device_id']}") if _MODE["gpu"] else torch.device("cpu")


def gpu_ids(flag: str | None) -> list[int]:
    """Caffe's get_gpus: empty -> [] (the CPU), ``all`` -> every visible GPU, ``0,1`` -> [0, 1].

    Asking for a GPU where CUDA is missing, or for one that does not exist, is a CaffeError.
    """
    if not flag:
        return []
    ids = None
    if flag != "all":
        try:
            ids = [int(g) for g in flag.split(",")]
        except ValueError:
            raise CaffeError(f"--gpu expects an id, ids separated by commas, or 'all'; got {flag!r}") from None
        if len(set(ids)) != len(ids) or min(ids) < 0:
            raise CaffeError(f"--gpu {flag}: give each GPU id once, as a number from 0")
    if not torch.cuda.is_available():
        raise CaffeError(f"--gpu {flag}: CUDA is not available on this machine (no NVIDIA GPU or driver, or a "
                         f"CPU-only PyTorch {torch.__version__}); leave out --gpu to run on the CPU")
    count = torch.cuda.device_count()
    if ids is None:
        return list(range(count))
    missing = [i for i in ids if i >= count]
    if missing:
        raise CaffeError(f"--gpu {flag}: there is no GPU {missing[0]} ({count} visible: 0..{count - 1})")
    return ids


def device_for(gpu: int | None) -> str:
    """The torch device of one ``--gpu ID`` (None or -1: the CPU), by ``gpu_ids``' rule: a GPU
    that is missing, or CUDA that is, is a CaffeError."""
    if gpu is None or int(gpu) < 0:
        return "cpu"
    return f"cuda:{gpu_ids(str(int(gpu)))[0]}"


def use_cuda_device(index: int) -> str:
    """Make CUDA device ``index`` the current one and let cuDNN time its convolution algorithms
    for each new shape once (cudnn.benchmark): a training net's fixed crops then run the fastest
    one every iteration. Returns the torch device string."""
    torch.cuda.set_device(index)
    torch.backends.cudnn.benchmark = True
    return f"cuda:{index}"
