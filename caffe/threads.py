"""How many threads the engine uses, and how they wait (the project's thread policy).

``available_cores()`` is what this process may really run on: its CPU affinity (taskset,
a container's cpuset), capped by a cgroup CPU quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1), not the machine's CPU count.

``configure()`` is called by the commands before torch loads. It sets, unless the user
already has: ``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep at the end of a parallel
region instead of spinning; measured by bench/bench_threads.py: with another process busy on
one of two cores, libgomp's default spin made 2 threads several times slower than 1 on a
narrow net, while PASSIVE kept them within the noise of 1 thread, and costs nothing
measurable on an idle machine), and torch's intra-op threads to ``available_cores()``
(``CAFFE_NUM_THREADS``, else ``OMP_NUM_THREADS``, overrides it). ``worker_init()`` is for a
worker process of a pool (densecrf -j N, the extraction's data loaders): one thread each,
since the pool already uses the cores.
"""
from __future__ import annotations

import math
import os

WAIT_POLICY = "PASSIVE"


def _cgroup_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs granted by a cgroup CPU quota under ``root``, or None when unlimited or unknown."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """The cores this process may run on: affinity, capped by the cgroup quota (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _threads_from_env() -> int | None:
    for name in ("CAFFE_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value.split(",")[0])
            except ValueError:
                continue
            if n >= 1:
                return n
    return None


def configure(threads: int | None = None) -> int:
    """Apply the policy: the wait policy unless set (effective when torch has not loaded yet),
    and the thread count (``threads``, else ``CAFFE_NUM_THREADS`` / ``OMP_NUM_THREADS``, else
    ``available_cores()``): torch's, where torch is loaded, else ``OMP_NUM_THREADS`` for when
    it loads (so a command that never needs torch does not load it). Returns the count."""
    import sys
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    n = threads or _threads_from_env() or available_cores()
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = str(n)
    return n


def worker_init() -> None:
    """A pool worker process's start (deeplab.parallel, so densecrf -j N and crf-search):
    one torch thread, one OpenCV thread; the pool spreads the work over the cores."""
    import sys
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    reader_init()


def reader_init() -> None:
    """A data-loading thread's start (the extraction's image readers): OpenCV's own pool is
    set to one thread, so readers decoding and resizing side by side do not each spread over
    every core while the net uses them. A plain import: it waits for another thread's import of
    cv2 to finish, where sys.modules could hand out the half-imported module."""
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)
