"""Score-map extraction: run a test prototxt over an image list, dump one score map per image.

What ``caffe test`` with the fork's MAT_WRITE layer did, batched and resumable. Each image
is read with OpenCV (BGR, 0-255) and preprocessed by the net's data layer; images are grouped
into batches of the same canvas size, and the score rows and columns covering each image are
kept (deeplab.extract.scorenet: the cut-down net, its preprocessing and the canvas / offset geometry).
Outputs: ``<id>.npy`` + ``<id>.json`` (deeplab.extract.scoremaps; the sidecar records the offset), or
``<id>_blob_0.mat`` (MAT_WRITE's blob over the whole canvas), and optionally ``<id>.png``
argmax labels at full resolution.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from caffe.threads import reader_init
from caffe.util.files import remove_stale_temps
from caffe.util.images import read_image

from .. import USER_ERRORS, DeepLabError
from ..lists import ListItem, read_items  # noqa: F401  (the list reader extraction uses)
from ..parallel import Pool
from ..provenance import file_stamp
from .scoremaps import save_mat_scores, save_scores, upsample_scores
from .scorenet import ScoreNet, memory_needed


def load_image(item: ListItem, list_name: str = "list") -> np.ndarray:
    """Read an image as H x W x 3 uint8 BGR (caffe.util.images.read_image); errors name the list line."""
    try:
        return read_image(item.path)
    except USER_ERRORS as e:
        raise DeepLabError(f"{list_name}:{item.lineno} (id {item.id}): {e}") from None


def label_palette(blob: str, channels: int, classes: str | None = None) -> np.ndarray | None:
    """The palette of argmax label PNGs for a blob of ``channels`` classes: the class list's
    when one is given (its class count must match), else VOC's colour map (None), which
    covers any count up to 256 (a PNG index is one byte)."""
    from ..labels import load_classes

    if classes is None:
        if channels > 256:
            raise DeepLabError(f"blob {blob!r} has {channels} channels; label PNGs hold at most 256 classes")
        return None
    cs = load_classes(classes)
    if cs.num_classes != channels:
        raise DeepLabError(f"blob {blob!r} has {channels} channels but class list {classes!r} has "
                           f"{cs.num_classes} classes; pass the matching --classes, or none for VOC's colours")
    return cs.palette


# ----------------------------------------------------------------------------- outputs
@dataclass
class Outputs:
    """Where and how to write: ``fmt`` npy|mat, ``dtype`` of .npy scores, optional label PNGs.
    ``records``: the folders' deeplab.provenance bindings (folder -> Provenance); an output
    there counts as finished only when made from this run's inputs."""

    out: str
    fmt: str = "npy"
    dtype: str = "float16"
    labels_out: str | None = None
    palette: np.ndarray | None = None
    records: dict | None = None

    def paths(self, ident: str) -> list[str]:
        """Every file written for ``ident`` (an id is finished when all exist)."""
        if self.fmt == "npy":
            files = [os.path.join(self.out, ident + ".json"), os.path.join(self.out, ident + ".npy")]
        else:
            files = [os.path.join(self.out, ident + "_blob_0.mat")]
        if self.labels_out:
            files.append(os.path.join(self.labels_out, ident + ".png"))
        return files

    def _by_record(self, ident: str) -> list[tuple[object, list[str]]]:
        """``ident``'s output paths grouped by the record of their folder (None: no record)."""
        records = {os.path.dirname(os.path.join(k, "x")): v for k, v in (self.records or {}).items()}
        groups: dict[int, tuple[object, list[str]]] = {}
        for p in self.paths(ident):
            record = records.get(os.path.dirname(p))
            groups.setdefault(id(record), (record, []))[1].append(p)
        return list(groups.values())

    def done(self, ident: str, stamps: dict | None = None) -> bool:
        """True when every output of ``ident`` exists (and, with records, was made from these
        inputs and from the input files whose ``stamps`` are given)."""
        for record, paths in self._by_record(ident):
            if record is None:
                if not all(os.path.exists(p) for p in paths):
                    return False
            elif stamps is None or not record.done(ident, stamps, paths):
                return False
        return True

    def note(self, ident: str, stamps: dict, source: str) -> None:
        """Record in each folder's record that ``ident``'s outputs are written, made from the
        input files of ``stamps`` (``source``: the image's path, for the CRF stage's check)."""
        for record, _ in self._by_record(ident):
            if record is not None:
                record.note(ident, stamps, source=source)

    def remove_stale_temps(self, idents: list[str]) -> None:
        """Remove what a killed run left of these ids' temporary files."""
        by_folder: dict[str, list[str]] = {}
        for ident in idents:
            for p in self.paths(ident):
                by_folder.setdefault(os.path.dirname(p), []).append(os.path.basename(p))
        for folder, names in by_folder.items():
            remove_stale_temps(folder, names)

    def write(self, ident: str, scores: np.ndarray, height: int, width: int, zoom: int,
              mat: np.ndarray | None, offset: int = 0, stamps: dict | None = None, source: str = "") -> None:
        """Write one image's outputs (each atomically; labels first, the score file last), then
        record them as made from the input files of ``stamps`` (see ``note``).
        Score row r lies on pixel ``r * zoom - offset``."""
        from ..labels import write_label

        if self.labels_out:
            full = upsample_scores(scores, zoom, height, width, offset)
            write_label(os.path.join(self.labels_out, ident + ".png"), full.argmax(0).astype(np.uint8), self.palette)
        if self.fmt == "npy":
            save_scores(os.path.join(self.out, ident + ".npy"), scores, height, width, zoom=zoom, dtype=self.dtype,
                        offset=offset)
        else:
            save_mat_scores(os.path.join(self.out, ident + "_blob_0.mat"), mat)
        if stamps is not None:
            self.note(ident, stamps, source)


class _Writer:
    """Writes finished images on background threads (deeplab.parallel.Pool); the first failure
    is re-raised."""

    def __init__(self, outputs: Outputs, zoom: int, offset: int, threads: int, limit: int):
        self.outputs, self.zoom, self.offset = outputs, zoom, offset
        self.pool = Pool(threads, threads=True, limit=max(1, limit), name="extract-write")
        self.futures: deque = deque()

    def submit(self, ident, scores, height, width, mat, stamps=None, source="") -> None:
        self.check()
        self.futures.append(self.pool.submit(self.outputs.write, ident, scores, height, width, self.zoom, mat,
                                             self.offset, stamps, source))

    def check(self) -> None:
        while self.futures and self.futures[0].done():
            self.futures.popleft().result()

    def close(self) -> None:
        self.pool.close()
        while self.futures:
            self.futures.popleft().result()


# ----------------------------------------------------------------------------- the run
def _stamps(item: ListItem) -> dict | None:
    """The stamp of the image an id's outputs are made from (None when it cannot be read)."""
    try:
        return {"image": file_stamp(item.path)}
    except OSError:
        return None


def check_layout(net: ScoreNet, fmt: str, labels_out: str | None) -> None:
    """Refuse a blob whose alignment the requested outputs cannot record (before any work)."""
    if net.offset < 0 and (fmt == "npy" or labels_out):
        raise DeepLabError(f"blob {net.blob!r}: its row r lies on pixel {net.zoom}r + {-net.offset} (the net pads "
                           f"the upsampled map before MatWrite), which a score map cannot record; dump the blob "
                           f"MatWrite reads with --blob {net.mat_chain_end!r}, or use --format mat")


def extract(net: ScoreNet, items: list[ListItem], outputs: Outputs, batch: int = 1, workers: int = 2,
            force: bool = False, list_name: str = "list", progress: bool = True,
            stats: dict | None = None) -> dict[str, int]:
    """Extract score maps for ``items``; skip finished ids unless ``force``. Non-finite scores
    are an error naming the id; so is running out of memory (naming the image and the size
    the net asked for).

    Images are read and preprocessed ``workers`` at a time ahead of the net, grouped into
    batches of the same canvas size, and written by background threads.
    Returns {"done": n written, "skipped": n already there}; ``stats``, when given, is that
    dict, kept up to date (what an interrupted run did: every write it counts is finished).
    """
    from tqdm import tqdm

    if batch < 1:
        raise DeepLabError(f"--batch must be >= 1, got {batch}")
    check_layout(net, outputs.fmt, outputs.labels_out)
    outputs.remove_stale_temps([it.id for it in items])  # what a killed run left of this run's ids
    todo = [it for it in items if force or not outputs.done(it.id, _stamps(it))]
    stats = {} if stats is None else stats
    stats.update(done=0, skipped=len(items) - len(todo))
    if not todo:
        return stats

    def read(item: ListItem) -> tuple[dict | None, np.ndarray]:
        stamps = _stamps(item)  # before reading: a file replaced meanwhile is redone next time
        return stamps, net.prepare(load_image(item, list_name))

    writer = _Writer(outputs, net.zoom, net.offset, threads=max(1, workers // 2), limit=4 * batch)
    reader = Pool(workers, threads=True, name="extract-read", initializer=reader_init)
    bar = tqdm(total=len(todo), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    buckets: dict[tuple[int, int], list] = {}

    def run(key):
        group = buckets.pop(key)
        try:
            canvas = np.zeros((len(group), key[0], key[1], 3), dtype=np.float32)
            for i, (_, image, _) in enumerate(group):
                canvas[i, : image.shape[0], : image.shape[1]] = image
            scores, mat = net.forward(canvas)
        except (MemoryError, RuntimeError) as e:
            need = memory_needed(e)
            if need is None:
                raise
            first, last = group[0][0], group[-1][0]
            where = (f"{list_name}:{first.lineno} (id {first.id}, a {group[0][1].shape[0]}x{group[0][1].shape[1]} image)"
                     if len(group) == 1 else
                     f"{list_name}:{first.lineno}-{last.lineno} (ids {', '.join(g[0].id for g in group)})")
            raise DeepLabError(f"{where}: out of memory on {net.device}: the net on a {key[0]}x{key[1]} canvas "
                               f"(batch {len(group)}) asked for {need} more than was free"
                               + ("; try a smaller --batch" if len(group) > 1 else "")) from None
        for i, (item, image, stamps) in enumerate(group):
            h, w = image.shape[:2]
            kept = np.ascontiguousarray(scores[i, :, : net.rows(h), : net.rows(w)])
            if not np.isfinite(kept).all():
                raise DeepLabError(f"{list_name}:{item.lineno} (id {item.id}): the net's blob {net.blob!r} holds "
                                   f"{int((~np.isfinite(kept)).sum())} NaN/Inf score(s)"
                                   + (" (try without --amp)" if net.amp is not None else ""))
            if outputs.fmt == "npy" and outputs.dtype == "float16" and np.abs(kept).max() > 65504:
                raise DeepLabError(f"{list_name}:{item.lineno} (id {item.id}): scores up to "
                                   f"{np.abs(kept).max():.3g} do not fit float16; use --dtype float32")
            writer.submit(item.id, kept, h, w, None if mat is None else mat[i], stamps, os.path.realpath(item.path))
            stats["done"] += 1
            bar.update(1)

    try:
        pending: deque = deque()
        for item in todo:  # keep up to 2 batches + workers images read ahead of the net
            pending.append((item, reader.submit(read, item)))
            if len(pending) >= 2 * batch + max(1, workers):
                _take(pending, net, buckets, batch, run)
        while pending:
            _take(pending, net, buckets, batch, run)
        for key in list(buckets):
            run(key)
    finally:
        reader.close(cancel=True)
        bar.close()
        writer.close()
    return stats


def _take(pending: deque, net: ScoreNet, buckets: dict, batch: int, run) -> None:
    """Move the oldest read image into its canvas bucket; run a bucket once full (or when too
    many images wait in partly filled buckets)."""
    item, fut = pending.popleft()
    stamps, image = fut.result()
    key = net.canvas(image.shape[0], image.shape[1])
    buckets.setdefault(key, []).append((item, image, stamps))
    if len(buckets[key]) >= batch:
        run(key)
    elif sum(len(g) for g in buckets.values()) > 2 * batch:
        run(max(buckets, key=lambda k: len(buckets[k])))


@dataclass
class ExtractJob:
    """One extraction run: what ``deeplab-extract`` is asked (its flags, by name)."""

    model: str
    weights: str
    list: str
    out: str
    root: str = ""
    labels_out: str | None = None
    classes: str | None = None
    format: str = "npy"
    dtype: str = "float16"
    blob: str | None = None
    mapping: dict = field(default_factory=dict)
    gpu: int | None = None
    amp: str | None = None
    channels_last: bool = True
    strict: bool = False
    backend: str = "engine"
    onnx_cache: str | None = None
    compile: bool = False
    batch: int = 1
    workers: int = 2
    force: bool = False
    shard: str | None = None
    progress: bool = True


def extract_list(job: ExtractJob, stats: dict | None = None) -> dict:
    """Check the job's inputs, build its score net, hold its output folders and extract every
    listed image (of the shard). ``stats`` (returned) fills as it goes: done, skipped, images,
    blob, zoom, shard (k, n)."""
    from caffe.common import device_for
    from caffe.util.files import check_output_dir, why_not

    from ..cli import parse_shard, shard
    from ..provenance import file_digest, open_output, text_digest

    stats = {} if stats is None else stats
    for what, path in (("--model", job.model), ("--weights", job.weights), ("--list", job.list)):
        if not os.path.isfile(path):
            raise DeepLabError(f"{what} {path} {why_not(path)}")
    if job.workers < 1:
        raise DeepLabError(f"--workers must be >= 1, got {job.workers}")
    check_output_dir(job.out, "--out folder")
    if job.labels_out:
        check_output_dir(job.labels_out, "--labels-out folder")
    stats["shard"] = parse_shard(job.shard)
    items = shard(read_items(job.list, job.root), job.shard)
    stats["images"] = len(items)
    net = ScoreNet(job.model, job.weights, blob=job.blob, mapping=job.mapping, device=device_for(job.gpu),
                   amp=job.amp, want_mat=job.format == "mat", channels_last=job.channels_last,
                   strict=job.strict, backend=job.backend, onnx_cache=job.onnx_cache,
                   say=lambda line: print(line, file=sys.stderr), compile=job.compile)
    stats["blob"], stats["zoom"] = net.blob, net.zoom
    palette = label_palette(net.blob, net.num_classes, job.classes) if job.labels_out else None
    check_layout(net, job.format, job.labels_out)
    inputs = {"weights": file_digest(job.weights), "net": net.identity(), "blob": net.blob, "format": job.format,
              "dtype": job.dtype if job.format == "npy" else "float32", "amp": net.precision,
              "palette": None if palette is None else text_digest(palette.tobytes())}
    if job.backend != "engine":      # recorded, and a change of backend redoes the outputs
        inputs["backend"] = job.backend
    if job.compile:                  # likewise: compiled scores differ from the engine's by round-off
        inputs["compile"] = True
    info = {"weights": job.weights, "model": job.model, "set": job.mapping, "list": job.list, "root": job.root}
    with contextlib.ExitStack() as held:
        records = {job.out: held.enter_context(open_output(job.out, "extract", inputs, info))}
        if job.labels_out:
            same = os.path.realpath(job.labels_out) == os.path.realpath(job.out)
            records[job.labels_out] = records[job.out] if same else held.enter_context(
                open_output(job.labels_out, "extract", inputs, info, what="--labels-out"))
        outputs = Outputs(job.out, job.format, job.dtype, job.labels_out, palette, records=records)
        extract(net, items, outputs, batch=job.batch, workers=job.workers, force=job.force,
                list_name=job.list, progress=job.progress, stats=stats)
    return stats
