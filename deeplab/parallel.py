"""The one worker pool of the pipeline: evaluation, the CRF batch and its search, the extract
writer (no torch here).

``run_tasks`` runs ``fn(item)`` over a list on worker processes (or threads), yielding each
item with its finished future as it completes; ``Pool`` is the same pool for work that is
submitted as it comes (with a bound on what may wait). With one worker everything runs in
this process, in order, unless ``isolate`` asks for worker processes anyway: then a worker
that dies (out of memory, a crash in C++) fails only the item it was running. However the caller stops (an error, Ctrl-C, a generator closed
early), queued work is cancelled and the workers are stopped; worker processes also die
with their parent (Linux), so a killed run leaves none behind.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this (worker) process when its parent dies (or has died already)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:
            os._exit(1)


def _quiet_cv2() -> int | None:
    """Stop OpenCV's thread pool in this process before forking workers (a forked child whose
    parent ran OpenCV's threads deadlocks in cv2.setNumThreads); returns the count to restore,
    or None where OpenCV is not in use."""
    cv2 = sys.modules.get("cv2")
    if cv2 is None:
        return None
    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return n


def _worker_start(parent: int, initializer, initargs) -> None:
    """Every worker process: die with the parent, SIGTERM's default action (the parent's
    handler is for the parent), one torch and one OpenCV thread (the workers are the
    parallelism), then the caller's initializer."""
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from caffe.threads import worker_init
    worker_init()     # one torch thread, one OpenCV thread
    if initializer is not None:
        initializer(*initargs)


def _done(fn: Callable, *args) -> Future:
    """A future already holding ``fn(*args)`` or its exception (the one-worker path)."""
    fut: Future = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as e:
        fut.set_exception(e)
    return fut


class Pool:
    """``workers`` processes (threads with ``threads``), or none (work runs in ``submit``) for
    ``workers <= 1`` unless ``isolate`` (then one process at least). ``limit`` bounds the submitted tasks not yet finished: ``submit`` waits
    for a slot. Use as a context manager: leaving it waits for the work, or on an exception
    cancels what is queued."""

    def __init__(self, workers: int, *, threads: bool = False, initializer: Callable | None = None,
                 initargs: tuple = (), limit: int | None = None, name: str = "pool", isolate: bool = False):
        self.workers = max(1, int(workers))
        self.executor = None
        self._cv2_threads: int | None = None
        if self.workers > 1 or threads or isolate:
            if threads:
                self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix=name, initializer=initializer,
                                                   initargs=initargs)
            else:
                self._cv2_threads = _quiet_cv2()
                self.executor = ProcessPoolExecutor(self.workers, initializer=_worker_start,
                                                    initargs=(os.getpid(), initializer, initargs))
        elif initializer is not None:
            initializer(*initargs)
        self.slots = threading.BoundedSemaphore(limit) if limit else None

    def submit(self, fn: Callable, *args) -> Future:
        """Start ``fn(*args)``; its future (already finished without workers)."""
        if self.executor is None:
            return _done(fn, *args)
        if self.slots is not None:
            self.slots.acquire()
        fut = self.executor.submit(fn, *args)
        if self.slots is not None:
            fut.add_done_callback(lambda _: self.slots.release())
        return fut

    def close(self, cancel: bool = False) -> None:
        """Stop the workers: after the submitted work, or dropping what is queued (``cancel``)."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=cancel)
            self.executor = None
        if self._cv2_threads is not None:
            import cv2

            cv2.setNumThreads(self._cv2_threads)
            self._cv2_threads = None

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close(cancel=kind is not None)


def run_tasks(fn: Callable[[Any], Any], items: Iterable, workers: int = 1, *,
              initializer: Callable | None = None, initargs: tuple = (),
              isolate: bool = False) -> Iterator[tuple[Any, Future]]:
    """Yield ``(item, future)`` for every item as ``fn(item)`` finishes on ``workers`` processes
    (in order, in this process, for one worker or one item, unless ``isolate``); ``future.result()``
    gives the value or raises the task's exception (BrokenProcessPool where a worker died: with
    ``isolate``, only for the item that killed its worker, the others are run again)."""
    items = list(items)
    workers = min(max(1, int(workers)), len(items)) if items else 1
    if isolate and items:
        yield from _run_isolated(fn, items, workers, initializer, initargs)
        return
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield item, _done(fn, item)
        return
    pool = Pool(workers, initializer=initializer, initargs=initargs)
    finished = False
    try:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in as_completed(futures):
            yield futures[fut], fut
        finished = True
    finally:  # an error, Ctrl-C or a caller that stopped early: do not wait for the queued items
        pool.close(cancel=not finished)


def _run_isolated(fn: Callable, items: list, workers: int, initializer, initargs) -> Iterator[tuple[Any, Future]]:
    """``run_tasks`` on worker processes where a dead worker fails only its own item: at most
    2 x ``workers`` items are out at a time; when a worker dies (the pool breaks, failing them
    all), each of those is run again alone in a fresh process, then the rest goes on."""
    queue = deque(items)
    while queue:
        suspects: list = []
        pool = Pool(workers, initializer=initializer, initargs=initargs, isolate=True)
        try:
            out: dict[Future, Any] = {}
            while queue or out:
                while queue and len(out) < 2 * workers:
                    item = queue.popleft()
                    out[pool.submit(fn, item)] = item
                finished, _ = wait(out, return_when=FIRST_COMPLETED)
                for fut in finished:
                    item = out.pop(fut)
                    if isinstance(fut.exception(), BrokenProcessPool):
                        suspects.append(item)
                    else:
                        yield item, fut
                if suspects:  # the pool is broken: everything still out failed with it
                    suspects += out.values()
                    break
        finally:
            pool.close(cancel=True)
        for item in suspects:  # each alone: the item that kills its worker is the one that fails
            alone = Pool(1, initializer=initializer, initargs=initargs, isolate=True)
            try:
                fut = alone.submit(fn, item)
                wait([fut])
            finally:
                alone.close(cancel=True)
            yield item, fut
