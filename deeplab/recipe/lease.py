"""The lent GPU machine's facts, and the checks that keep one recipe call inside them.

A session that is lent a GPU gets about 15 minutes of device time in all (the machine's start
and the transfers included) and one command of at most 10 minutes on it: the working tree and
the carried pack travel up (at most 64 MiB), and at most 8 files of at most 16 MiB, no more than
64 MiB together, come back from ``$OUT``; a file beyond those is dropped without a word. The
machine runs its own image (Python 3.12, torch 2.11 with CUDA 13, numpy 2.5: the device tool's
KINDS.md), not this project's pins. ``make camvid-gpu-pack`` and ``make camvid-gpu-dry-run``
check the recipe against these numbers here (``deeplab-recipe check-upload``, ``check-plan``,
``check-versions``); the recipe itself sizes its data loading to ``/dev/shm``
(:func:`loader_workers`), stops on a deadline and checks what it sends back
(:func:`check_return`).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from .. import DeepLabError

MIB = 1 << 20
# The GPU image as the device tool's KINDS.md reports it (python3 there: 3.12.3; pip list: torch
# 2.11.0+cu130, numpy 2.5.2). Its protobuf's version is not recorded, so caffe_pb2's runtime
# (gencode 7.35.1) travels as a wheel in the pack and is put first on the path.
GPU_IMAGE = {"python": "3.12", "torch": "2.11", "numpy": "2.5"}
UPLOAD_LIMIT = 64 * MIB            # working tree + carried paths, refused whole above it
UPLOAD_BUDGET = 60 * MIB           # what `make camvid-gpu-pack` allows itself (margin for edits)
RETURN_FILES, RETURN_FILE_BYTES, RETURN_BYTES = 8, 16 * MIB, 64 * MIB
RETURN_HEADROOM_FILES, RETURN_HEADROOM_BYTES = 1, 8 * MIB
WORK_MINUTES = 7.5                 # of the 10-minute command, the machine's start eating into 15 minutes
SHM_SHARE = 0.5                    # of /dev/shm's free bytes that loader batches may take


def tree_files(repo: str) -> list[str]:
    """The files of ``repo`` that travel with a call: tracked, and untracked but not ignored."""
    try:
        out = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise DeepLabError(f"{repo}: cannot list the files of the working tree ({e})") from None
    names = sorted({n for n in out.decode().split("\0") if n})
    return [n for n in names if os.path.isfile(os.path.join(repo, n))]   # (deleted but still tracked: absent)


def folder_bytes(path: str) -> int:
    """Bytes of the plain files under ``path`` (a file: its size)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


def check_upload(repo: str, carried: list[str], budget: int = UPLOAD_BUDGET) -> dict:
    """Bytes that a call from ``repo`` carrying ``carried`` (paths relative to it) would send;
    a DeepLabError naming each part if they exceed ``budget``."""
    tree = sum(os.path.getsize(os.path.join(repo, n)) for n in tree_files(repo))
    parts = {"tree": tree}
    for path in carried:
        full = os.path.join(repo, path)
        if not os.path.exists(full):
            raise DeepLabError(f"{full}: a carried path that does not exist")
        parts[path] = folder_bytes(full)
    total = sum(parts.values())
    if total > budget:
        detail = ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in parts.items())
        raise DeepLabError(f"upload of {total / MIB:.1f} MiB ({detail}) exceeds {budget / MIB:.0f} MiB "
                           f"(the machine refuses more than {UPLOAD_LIMIT / MIB:.0f} MiB)")
    return {"bytes": total, "parts": parts}


_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def check_return(out: str, max_files: int = RETURN_FILES - RETURN_HEADROOM_FILES,
                 max_bytes: int = RETURN_BYTES - RETURN_HEADROOM_BYTES) -> list[dict]:
    """What ``out`` would send back: [{"name", "bytes"}], sorted by name. A DeepLabError if a
    file would be dropped (more than 2 folders down, a name other than letters, digits, '.',
    '_', '-', larger than 16 MiB) or if the files exceed ``max_files`` / ``max_bytes`` (the
    limits less the headroom the recipe keeps)."""
    files = []
    for d, dirs, fs in os.walk(out):
        for f in fs:
            rel = os.path.relpath(os.path.join(d, f), out)
            parts = rel.split(os.sep)
            if len(parts) > 3 or not all(_NAME.match(p) for p in parts):
                raise DeepLabError(f"{os.path.join(out, rel)}: would not come back (too deep or an odd name)")
            files.append({"name": "/".join(parts), "bytes": os.path.getsize(os.path.join(d, f))})
    files.sort(key=lambda x: x["name"])
    big = [f["name"] for f in files if f["bytes"] > RETURN_FILE_BYTES]
    total = sum(f["bytes"] for f in files)
    if big:
        raise DeepLabError(f"{out}: {', '.join(big)} larger than {RETURN_FILE_BYTES // MIB} MiB would not come back")
    if len(files) > max_files or total > max_bytes:
        raise DeepLabError(f"{out}: {len(files)} files, {total / MIB:.1f} MiB; at most {max_files} files and "
                           f"{max_bytes / MIB:.0f} MiB leave the headroom ({RETURN_FILES} files, "
                           f"{RETURN_BYTES // MIB} MiB come back)")
    return files


def loader_workers(wanted: int, batch_bytes: int, prefetch: int = 4, shm_free: int | None = None,
                   share: float = SHM_SHARE) -> int:
    """Data-loading processes that fit ``/dev/shm``: each keeps ``prefetch`` batches of
    ``batch_bytes`` there (a worker that cannot dies with a bus error). At most ``wanted``;
    0 (loading in the training process, no shared memory) if not even one fits."""
    if shm_free is None:
        try:
            shm_free = shutil.disk_usage("/dev/shm").free
        except OSError:
            shm_free = 0
    if batch_bytes <= 0:
        return max(0, wanted)
    return max(0, min(wanted, int(shm_free * share // (prefetch * batch_bytes))))


def train_batch_bytes(train_prototxt: str) -> int:
    """Bytes of one training batch in a loader's shared memory, from the first data layer's
    ``batch_size`` and ``crop_size``: float32 image (3 channels) and label (1 channel)."""
    with open(train_prototxt) as f:
        text = f.read()
    batch = re.search(r"\bbatch_size:\s*(\d+)", text)
    crop = re.search(r"\bcrop_size:\s*(\d+)", text)
    if not batch or not crop:
        raise DeepLabError(f"{train_prototxt}: no batch_size and crop_size to size the data loading by")
    return int(batch.group(1)) * 4 * int(crop.group(1)) ** 2 * 4


def check_versions(expected: dict[str, str] | None = None) -> dict[str, str]:
    """The running Python's, torch's and numpy's versions; a DeepLabError if one differs from
    ``expected`` (default: the GPU image's) in its major.minor."""
    import numpy
    import torch
    have = {"python": sys.version.split()[0], "torch": torch.__version__.split("+")[0], "numpy": numpy.__version__}
    expected = GPU_IMAGE if expected is None else expected
    wrong = [f"{k} {have[k]} (the GPU image has {v})" for k, v in expected.items()
             if ".".join(have[k].split(".")[:2]) != v]
    if wrong:
        raise DeepLabError("not the GPU image's versions: " + ", ".join(wrong))
    return have
