"""Batch CRF over a list of images: worker processes, resumable, failures reported by id.

Every image runs in a worker process, ``-j 1`` included, so an image whose CRF dies (out of
memory: pydensecrf2 aborts) fails alone and the batch goes on (deeplab.parallel)."""
from __future__ import annotations

import os
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from deeplab import DeepLabError
from caffe.util.files import WriteError, atomic_path, remove_stale_temps
from deeplab.labels import write_label
from deeplab.parallel import run_tasks
from deeplab.provenance import Provenance

from densecrf import refine
from .io import input_stamps, load_pair
from densecrf.params import CRFParams


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
    record: Provenance | None = None  # the output folder bound to these inputs (deeplab.provenance)
    scores_since: int | None = None  # score maps older than this (their folder's record) are stale
    scores_journal: dict | None = None  # the score folder's per-map record (deeplab.provenance.read_journal)

    def outputs(self, image_id: str) -> list[str]:
        """The files a finished id has: the label PNG (and the marginals with save_prob)."""
        paths = [os.path.join(self.out_dir, image_id + ".png")]
        if self.save_prob:
            paths.append(os.path.join(self.out_dir, image_id + ".npy"))
        return paths

    def stamps(self, image_id: str) -> dict | None:
        """The stamps of the image and score files ``image_id``'s outputs are made from."""
        return input_stamps(self.images_dir, self.scores_dir, image_id)

    def done(self, image_id: str) -> bool:
        """True when every output of ``image_id`` exists (with a record: made from these inputs
        and from these very image and score files)."""
        if self.record is not None:
            stamps = self.stamps(image_id)
            return stamps is not None and self.record.done(image_id, stamps, self.outputs(image_id))
        return all(os.path.isfile(p) for p in self.outputs(image_id))


@dataclass
class BatchResult:
    """What a batch run did: ids refined, skipped as already done, and failed (with why)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def process_one(job: BatchJob, image_id: str) -> dict | None:
    """Read one image and its scores, run the CRF, write its outputs atomically; returns the
    stamps of the input files, taken before reading them (see ``BatchJob.stamps``)."""
    stamps = job.stamps(image_id)
    entry = None if job.scores_journal is None else job.scores_journal.get(image_id)
    image, sm = load_pair(job.images_dir, job.scores_dir, image_id, job.scores_since, entry)
    if job.num_classes is not None and sm.classes != job.num_classes:
        raise DeepLabError(f"score map has {sm.classes} classes, the class list {job.num_classes}")
    labels, prob = refine(image, sm.scores, job.params, return_prob=True, backend=job.backend)
    del image, sm
    if job.save_prob:
        with atomic_path(os.path.join(job.out_dir, image_id + ".npy")) as tmp:
            np.save(tmp, prob.astype(job.prob_dtype, copy=False))
    del prob
    write_label(os.path.join(job.out_dir, image_id + ".png"), labels, job.palette)
    return stamps


def _describe(e: BaseException) -> str:
    if isinstance(e, DeepLabError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _safe_one(job: BatchJob, image_id: str) -> tuple[str | None, dict | None]:
    """``process_one``: (None, input stamps) on success, else (its one-line message, None)."""
    try:
        return None, process_one(job, image_id)
    except WriteError:
        raise  # a full disk or a read-only folder stops the batch: every other image would fail too
    except Exception as e:  # one bad image must not stop the batch
        return _describe(e), None


_JOB: BatchJob | None = None


def _init_worker(job: BatchJob) -> None:
    global _JOB
    _JOB = job


def _work(image_id: str) -> tuple[str | None, dict | None]:
    assert _JOB is not None
    return _safe_one(_JOB, image_id)


def run_batch(job: BatchJob, ids: list[str], workers: int = 1, force: bool = False,
              progress: bool = True) -> BatchResult:
    """Refine ``ids`` with ``workers`` processes (deeplab.parallel, one at least, so that an
    image that kills its worker fails alone); finished ids are skipped unless ``force``. An
    image that fails is recorded and the batch goes on; a WriteError (disk full, ...) stops it.
    Each refined id is recorded in ``job.record`` as it finishes."""
    result = BatchResult()
    todo = []
    for image_id in ids:
        (todo if force or not job.done(image_id) else result.skipped).append(image_id)
    os.makedirs(job.out_dir, exist_ok=True)
    remove_stale_temps(job.out_dir, [os.path.basename(p) for i in ids for p in job.outputs(i)])
    bar = tqdm(total=len(todo), unit="img", desc="densecrf", disable=not progress or not todo,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for image_id, fut in run_tasks(_work, todo, workers, initializer=_init_worker, initargs=(job,),
                                       isolate=True):
            try:
                error, stamps = fut.result()
            except BrokenProcessPool:
                error = "worker process died (out of memory or crashed)"
            if error is None:
                if job.record is not None and stamps is not None:
                    job.record.note(image_id, stamps)
                result.done.append(image_id)
            else:
                result.failed.append((image_id, error))
                bar.write(f"failed {image_id}: {error}", file=sys.stderr)
            bar.update(1)
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
