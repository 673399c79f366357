"""Score-map extraction: run a test prototxt over an image list, dump one score map per image.

What ``caffe test`` with the fork's MAT_WRITE layer did, batched and resumable. Each image
is read with OpenCV (BGR, 0-255) and preprocessed by the net's data layer; images are grouped
into batches of the same canvas size, and the score rows and columns covering each image are
kept (deeplab.scorenet: the cut-down net, its preprocessing and the canvas / offset geometry).
Outputs: ``<id>.npy`` + ``<id>.json`` (deeplab.scoremaps; the sidecar records the offset), or
``<id>_blob_0.mat`` (MAT_WRITE's blob over the whole canvas), and optionally ``<id>.png``
argmax labels at full resolution.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from . import DeepLabError
from .scoremaps import save_mat_scores, save_scores, upsample_scores
from .scorenet import ScoreNet

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_LOOKUP_EXTS = (".jpg", ".png", ".jpeg")


# ----------------------------------------------------------------------------- list files
@dataclass(frozen=True)
class ListItem:
    """One image of a list file: its 1-based line number, id and resolved path."""

    lineno: int
    id: str
    path: str


def read_list(path: str | os.PathLike, root: str | os.PathLike = "") -> list[ListItem]:
    """Read a release-style list (``/JPEGImages/X.jpg [/SegmentationClassAug/X.png]``, paths
    relative to ``root``) or a list of plain ids (image ``<root>/X.jpg``, ``.png`` or ``.jpeg``).

    A first token with a ``/`` or an image extension is a path; anything else is an id.
    Extra columns (the label) are ignored; ids (file stems) must be unique.
    """
    root = os.fspath(root)
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as e:
        raise DeepLabError(f"cannot read list {path}: {e.strerror}") from None
    items: list[ListItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        token = tokens[0]
        if "/" in token or token.lower().endswith(IMAGE_EXTS):
            image = os.path.join(root, token.lstrip("/")) if root else token
            ident = os.path.splitext(os.path.basename(token))[0]
        else:
            ident = token
            candidates = [os.path.join(root, token + ext) for ext in _LOOKUP_EXTS]
            image = next((c for c in candidates if os.path.exists(c)), candidates[0])
        if not ident:
            raise DeepLabError(f"{path}:{lineno}: no image name in {line.strip()!r}")
        if ident in seen:
            raise DeepLabError(f"{path}:{lineno}: id {ident!r} repeats line {seen[ident]} (outputs would collide)")
        seen[ident] = lineno
        items.append(ListItem(lineno, ident, image))
    return items


def shard(items: list, k: int, n: int) -> list:
    """Shard ``k`` (0-based) of ``n``: every n-th item from the k-th, so shards are disjoint and
    their union is the list."""
    return items[k::n]


def load_image(item: ListItem, list_name: str = "list") -> np.ndarray:
    """Read an image as H x W x 3 uint8 BGR (grey images are expanded); errors name the list line."""
    where = f"{list_name}:{item.lineno} (id {item.id})"
    if not os.path.isfile(item.path):
        raise DeepLabError(f"{where}: image {item.path} not found")
    data = np.fromfile(item.path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DeepLabError(f"{where}: {item.path} is not a readable image")
    return image


# ----------------------------------------------------------------------------- outputs
@dataclass
class Outputs:
    """Where and how to write: ``fmt`` npy|mat, ``dtype`` of .npy scores, optional label PNGs."""

    out: str
    fmt: str = "npy"
    dtype: str = "float16"
    labels_out: str | None = None
    palette: np.ndarray | None = None

    def paths(self, ident: str) -> list[str]:
        """Every file written for ``ident`` (an id is finished when all exist)."""
        if self.fmt == "npy":
            files = [os.path.join(self.out, ident + ".json"), os.path.join(self.out, ident + ".npy")]
        else:
            files = [os.path.join(self.out, ident + "_blob_0.mat")]
        if self.labels_out:
            files.append(os.path.join(self.labels_out, ident + ".png"))
        return files

    def done(self, ident: str) -> bool:
        """True when every output of ``ident`` exists."""
        return all(os.path.exists(p) for p in self.paths(ident))

    def write(self, ident: str, scores: np.ndarray, height: int, width: int, zoom: int,
              mat: np.ndarray | None, offset: int = 0) -> None:
        """Write one image's outputs (each atomically; labels first, the score file last).
        Score row r lies on pixel ``r * zoom - offset``."""
        from .labels import write_label

        if self.labels_out:
            full = upsample_scores(scores, zoom, height, width, offset)
            write_label(os.path.join(self.labels_out, ident + ".png"), full.argmax(0).astype(np.uint8), self.palette)
        if self.fmt == "npy":
            save_scores(os.path.join(self.out, ident + ".npy"), scores, height, width, zoom=zoom, dtype=self.dtype,
                        offset=offset)
        else:
            save_mat_scores(os.path.join(self.out, ident + "_blob_0.mat"), mat)


class _Writer:
    """Writes finished images on background threads; the first failure is re-raised."""

    def __init__(self, outputs: Outputs, zoom: int, offset: int, threads: int, limit: int):
        self.outputs, self.zoom, self.offset = outputs, zoom, offset
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="extract-write")
        self.slots = threading.BoundedSemaphore(max(1, limit))
        self.futures: deque = deque()

    def submit(self, ident, scores, height, width, mat) -> None:
        self.check()
        self.slots.acquire()
        fut = self.pool.submit(self.outputs.write, ident, scores, height, width, self.zoom, mat, self.offset)
        fut.add_done_callback(lambda _: self.slots.release())
        self.futures.append(fut)

    def check(self) -> None:
        while self.futures and self.futures[0].done():
            self.futures.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        while self.futures:
            self.futures.popleft().result()


# ----------------------------------------------------------------------------- the run
def extract(net: ScoreNet, items: list[ListItem], outputs: Outputs, batch: int = 1, workers: int = 2,
            force: bool = False, list_name: str = "list", progress: bool = True) -> dict[str, int]:
    """Extract score maps for ``items``; skip finished ids unless ``force``.

    Images are read and preprocessed ``workers`` at a time ahead of the net, grouped into
    batches of the same canvas size, and written by background threads.
    Returns {"done": n written, "skipped": n already there}.
    """
    from tqdm import tqdm

    if batch < 1:
        raise DeepLabError(f"--batch must be >= 1, got {batch}")
    if net.offset < 0 and (outputs.fmt == "npy" or outputs.labels_out):
        raise DeepLabError(f"blob {net.blob!r}: its row r lies on pixel {net.zoom}r + {-net.offset} (the net pads "
                           f"the upsampled map before MatWrite), which a score map cannot record; dump the blob "
                           f"MatWrite reads with --blob {net.mat_chain_end!r}, or use --format mat")
    todo = [it for it in items if force or not outputs.done(it.id)]
    stats = {"done": 0, "skipped": len(items) - len(todo)}
    if not todo:
        return stats

    def read(item: ListItem) -> np.ndarray:
        return net.prepare(load_image(item, list_name))

    writer = _Writer(outputs, net.zoom, net.offset, threads=max(1, workers // 2), limit=4 * batch)
    reader = ThreadPoolExecutor(max(1, workers), thread_name_prefix="extract-read")
    bar = tqdm(total=len(todo), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    buckets: dict[tuple[int, int], list] = {}

    def run(key):
        group = buckets.pop(key)
        canvas = np.zeros((len(group), key[0], key[1], 3), dtype=np.float32)
        for i, (_, image) in enumerate(group):
            canvas[i, : image.shape[0], : image.shape[1]] = image
        scores, mat = net.forward(canvas)
        for i, (item, image) in enumerate(group):
            h, w = image.shape[:2]
            kept = np.ascontiguousarray(scores[i, :, : net.rows(h), : net.rows(w)])
            writer.submit(item.id, kept, h, w, None if mat is None else mat[i])
        stats["done"] += len(group)
        bar.update(len(group))

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
        reader.shutdown(wait=True, cancel_futures=True)
        bar.close()
        writer.close()
    return stats


def _take(pending: deque, net: ScoreNet, buckets: dict, batch: int, run) -> None:
    """Move the oldest read image into its canvas bucket; run a bucket once full (or when too
    many images wait in partly filled buckets)."""
    item, fut = pending.popleft()
    image = fut.result()
    key = net.canvas(image.shape[0], image.shape[1])
    buckets.setdefault(key, []).append((item, image))
    if len(buckets[key]) >= batch:
        run(key)
    elif sum(len(g) for g in buckets.values()) > 2 * batch:
        run(max(buckets, key=lambda k: len(buckets[k])))
