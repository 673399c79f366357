"""Checks of values that live on a device, without waiting for the device each iteration.

Reading a device value on the host (``bool(t)``, ``float(t)``, ``.item()``) makes the host wait
for everything queued before it. A training loop that checks its labels and its loss that way
waits once per check per iteration. Inside :func:`deferred` (the solver's training steps), a
check of a device value is kept as a 0-d boolean tensor and its error as a function that
builds it; :func:`flush` reads all kept flags with one wait (at display time, before a
snapshot, at the end of the steps, and every ``MAX_PENDING`` checks at the latest) and raises
the first failed check's error, the same error the immediate check gives. On the CPU, or
outside :func:`deferred`, a check is made at once.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from . import syncedmem

MAX_PENDING = 16   # kept checks before a flush is forced (each keeps its inputs, e.g. a label batch, alive)

_pending: list[tuple[torch.Tensor, Callable[[], BaseException]]] = []
_depth = [0]


def check(failed: torch.Tensor, error: Callable[[], BaseException]) -> None:
    """Raise ``error()`` if the boolean ``failed`` (a 0-d tensor) is true: at once on the CPU or
    outside :func:`deferred`; else at the next :func:`flush`."""
    if not _depth[0] or not syncedmem.separate(failed.device):
        if bool(failed):
            raise error()
        return
    _pending.append((failed.detach().reshape(()), error))
    if len(_pending) >= MAX_PENDING:
        flush()


def flush() -> None:
    """Read every kept check's flag (one wait for the device) and raise the first failed one's
    error; the kept checks are cleared either way."""
    if not _pending:
        return
    pending = list(_pending)
    _pending.clear()
    flags = torch.stack([f.to(pending[0][0].device) for f, _ in pending]).tolist()
    for (_, error), failed in zip(pending, flags):
        if failed:
            raise error()


@contextlib.contextmanager
def deferred():
    """Within: checks of device values wait for :func:`flush`; leaving flushes them (unless
    leaving on an error, when they are dropped)."""
    _depth[0] += 1
    try:
        yield
    except BaseException:
        if _depth[0] == 1:
            _pending.clear()
        raise
    finally:
        _depth[0] -= 1
    if _depth[0] == 0:
        flush()
