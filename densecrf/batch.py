"""Batch CRF over a list of images: worker processes, resumable, failures reported by id."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from deeplab import DeepLabError
from caffe.files import atomic_path
from deeplab.labels import write_label

from . import refine
from .io import load_pair
from .params import CRFParams


@dataclass(frozen=True)
class BatchJob:
    """Everything a worker needs to refine one image id (picklable)."""

    images_dir: str
    scores_dir: str
    out_dir: str
    params: CRFParams = CRFParams()
    backend: str = "pydensecrf2"
    save_prob: bool = False
    prob_dtype: str = "float32"
    palette: np.ndarray | None = None  # 256 x 3; None = VOC colours
    num_classes: int | None = None  # checked against the score maps when given

    def outputs(self, image_id: str) -> list[str]:
        """The files a finished id has: the label PNG (and the marginals with save_prob)."""
        paths = [os.path.join(self.out_dir, image_id + ".png")]
        if self.save_prob:
            paths.append(os.path.join(self.out_dir, image_id + ".npy"))
        return paths

    def done(self, image_id: str) -> bool:
        """True when every output of ``image_id`` exists."""
        return all(os.path.isfile(p) for p in self.outputs(image_id))


@dataclass
class BatchResult:
    """What a batch run did: ids refined, skipped as already done, and failed (with why)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def process_one(job: BatchJob, image_id: str) -> None:
    """Read one image and its scores, run the CRF, write its outputs atomically."""
    image, sm = load_pair(job.images_dir, job.scores_dir, image_id)
    if job.num_classes is not None and sm.classes != job.num_classes:
        raise DeepLabError(f"score map has {sm.classes} classes, the class list {job.num_classes}")
    labels, prob = refine(image, sm.scores, job.params, return_prob=True, backend=job.backend)
    del image, sm
    if job.save_prob:
        with atomic_path(os.path.join(job.out_dir, image_id + ".npy")) as tmp:
            np.save(tmp, prob.astype(job.prob_dtype, copy=False))
    del prob
    write_label(os.path.join(job.out_dir, image_id + ".png"), labels, job.palette)


def _describe(e: BaseException) -> str:
    if isinstance(e, DeepLabError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _safe_one(job: BatchJob, image_id: str) -> str | None:
    """``process_one``; an exception becomes its one-line message (None on success)."""
    try:
        process_one(job, image_id)
    except Exception as e:  # one bad image must not stop the batch
        return _describe(e)
    return None


_JOB: BatchJob | None = None


def _init_worker(job: BatchJob) -> None:
    global _JOB
    _JOB = job
    try:
        import cv2

        cv2.setNumThreads(1)  # the workers are the parallelism
    except ImportError:
        pass


def _work(image_id: str) -> tuple[str, str | None]:
    assert _JOB is not None
    return image_id, _safe_one(_JOB, image_id)


def select_shard(ids: list[str], shard: tuple[int, int]) -> list[str]:
    """Ids of shard ``(k, n)`` (0-based k): every n-th id starting at the k-th."""
    k, n = shard
    return ids[k::n]


def run_batch(job: BatchJob, ids: list[str], workers: int = 1, force: bool = False,
              progress: bool = True) -> BatchResult:
    """Refine ``ids`` with ``workers`` processes; finished ids are skipped unless ``force``."""
    result = BatchResult()
    todo = []
    for image_id in ids:
        (todo if force or not job.done(image_id) else result.skipped).append(image_id)
    os.makedirs(job.out_dir, exist_ok=True)
    bar = tqdm(total=len(todo), unit="img", desc="densecrf", disable=not progress or not todo,
               dynamic_ncols=True, file=sys.stderr)

    def record(image_id: str, error: str | None) -> None:
        if error is None:
            result.done.append(image_id)
        else:
            result.failed.append((image_id, error))
            bar.write(f"failed {image_id}: {error}", file=sys.stderr)
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for image_id in todo:
                record(image_id, _safe_one(job, image_id))
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_init_worker,
                                       initargs=(job,))
            try:
                futures = {pool.submit(_work, i): i for i in todo}
                for fut in as_completed(futures):
                    try:
                        record(*fut.result())
                    except BrokenProcessPool:
                        record(futures[fut], "worker process died (out of memory or crashed)")
            finally:  # on Ctrl-C, do not wait for the queued images
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
    return result


def summary(result: BatchResult, out_dir: str) -> str:
    """Human-readable end-of-run summary (multi-line when something failed)."""
    head = (f"{len(result.done)} refined, {len(result.skipped)} already done (skipped), "
            f"{len(result.failed)} failed; outputs in {out_dir}")
    if not result.failed:
        return head
    lines = [head, f"{len(result.failed)} image(s) failed:"]
    lines += [f"  {image_id}: {error}" for image_id, error in sorted(result.failed)]
    return "\n".join(lines)
