"""CRF parameter search (paper, Section 5): a coarse grid, then a finer grid around the best.

Every setting is scored by the mean IoU (``deeplab.eval.ConfusionMatrix``, one matrix over
the whole subset) of the CRF's labels on a seeded random subset of images with ground truth.
Settings run in parallel (one setting per worker, images loaded one at a time); each finished
setting is written to the CSV at once, so a rerun resumes where it stopped.
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from deeplab import DeepLabError
from caffe.files import atomic_path, write_bytes_atomic
from deeplab.eval import ConfusionMatrix
from deeplab.labels import read_label

from . import refine
from .io import find_image, find_scores, load_pair
from .params import CRFParams

PARAM_COLUMNS = ("iters", "bi_w", "bi_xy_std", "bi_rgb_std", "pos_w", "pos_xy_std", "normalization")
COLUMNS = ("stage",) + PARAM_COLUMNS + ("mean_iou", "pixel_acc", "images")
# The paper's coarse grid (Section 5): w1 in 5..10, sigma_alpha in 50:10:100, sigma_beta in 3:1:10.
COARSE = {"bi_w": "5:1:10", "bi_xy_std": "50:10:100", "bi_rgb_std": "3:1:10"}


def parse_grid(spec: str) -> list[float]:
    """Grid values from ``a,b,c``, ``start:stop`` (step 1) or MATLAB-style ``start:step:stop``."""
    try:
        if ":" in spec:
            parts = [float(v) for v in spec.split(":")]
            if len(parts) == 2:
                parts = [parts[0], 1.0, parts[1]]
            start, step, stop = parts
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 10) for i in range(n)]
        values = [float(v) for v in spec.split(",") if v.strip()]
        if not values:
            raise ValueError
        return sorted(set(values))
    except ValueError:
        raise DeepLabError(f"grid {spec!r}: expected 'a,b,c', 'start:stop' or 'start:step:stop' (step > 0)") from None


def grid_settings(base: CRFParams, axes: dict[str, list[float]]) -> list[CRFParams]:
    """Every combination of the axes' values over ``base``."""
    out = [base]
    for name, values in axes.items():
        out = [p.replace(**{name: v}) for p in out for v in values]
    return out


def fine_axes(best: CRFParams, coarse: dict[str, list[float]], div: int = 2) -> dict[str, list[float]]:
    """Around ``best``: +-1 coarse step in steps of coarse step / ``div`` (positive values only)."""
    axes = {}
    for name, values in coarse.items():
        centre = float(getattr(best, name))
        if len(values) < 2:
            axes[name] = [centre]
            continue
        step = min(b - a for a, b in zip(values, values[1:]))
        cand = [round(centre + k * step / div, 10) for k in range(-div, div + 1)]
        axes[name] = [v for v in cand if v > 0]
    return axes


def key(p: CRFParams) -> tuple:
    """Identity of a setting in the CSV (floats compared at 6 significant digits)."""
    floats = (f"{float(getattr(p, c)):.6g}" for c in PARAM_COLUMNS[1:-1])
    return (int(p.iters), *floats, p.normalization)


@dataclass(frozen=True)
class SearchData:
    """The evaluation subset and how to read it."""

    images_dir: str
    scores_dir: str
    labels_dir: str
    ids: tuple[str, ...]
    num_classes: int
    ignore_label: int = 255
    backend: str = "pydensecrf2"


def choose_subset(ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded random subset of ``n`` ids (all when fewer), in list order."""
    if n >= len(ids):
        return list(ids)
    chosen = set(random.Random(seed).sample(range(len(ids)), n))
    return [i for k, i in enumerate(ids) if k in chosen]


def check_inputs(data: SearchData) -> None:
    """Fail early, naming the id, when an image, score map or label of the subset is missing."""
    for image_id in data.ids:
        find_image(data.images_dir, image_id)
        find_scores(data.scores_dir, image_id)
        if not os.path.isfile(os.path.join(data.labels_dir, image_id + ".png")):
            raise DeepLabError(f"no ground truth {image_id}.png in {data.labels_dir}")


def evaluate(data: SearchData, params: CRFParams) -> ConfusionMatrix:
    """Confusion matrix of the CRF's labels with ``params`` over the subset."""
    cm = ConfusionMatrix(data.num_classes, data.ignore_label)
    for image_id in data.ids:
        image, sm = load_pair(data.images_dir, data.scores_dir, image_id)
        gt = read_label(os.path.join(data.labels_dir, image_id + ".png"))
        if gt.shape != image.shape[:2]:
            raise DeepLabError(f"{image_id}: ground truth is {gt.shape[0]}x{gt.shape[1]}, "
                               f"the image {image.shape[0]}x{image.shape[1]}")
        pred = refine(image, sm.scores, params, backend=data.backend)
        try:
            cm.update(gt, pred)
        except ValueError as e:
            raise DeepLabError(f"{image_id}: {e} (set --ignore-label / --classes to match the labels)") from None
    return cm


_DATA: SearchData | None = None


def _init_worker(data: SearchData) -> None:
    global _DATA
    _DATA = data
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _work(params: CRFParams) -> tuple[CRFParams, dict]:
    assert _DATA is not None
    r = evaluate(_DATA, params).compute()
    return params, {"mean_iou": r["mean_iou"], "pixel_acc": r["pixel_acc"]}


class Results:
    """Every evaluated setting, mirrored to a CSV file (rewritten atomically after each one)."""

    def __init__(self, path: str):
        self.path = path
        self.rows: dict[tuple, dict] = {}
        if os.path.isfile(path):
            with open(path, newline="") as f:
                for lineno, row in enumerate(csv.DictReader(f), 2):
                    try:
                        p = CRFParams.from_dict({c: (row[c] if c == "normalization" else float(row[c]))
                                                 for c in PARAM_COLUMNS})
                        row["mean_iou"], row["pixel_acc"] = float(row["mean_iou"]), float(row["pixel_acc"])
                    except (KeyError, TypeError, ValueError, DeepLabError):
                        raise DeepLabError(f"{path}:{lineno}: not a search result row (delete it or use --force)") from None
                    self.rows[key(p)] = dict(row, params=p)

    def has(self, p: CRFParams) -> bool:
        return key(p) in self.rows

    def get(self, p: CRFParams) -> dict:
        return self.rows[key(p)]

    def add(self, stage: str, p: CRFParams, metrics: dict, images: int) -> None:
        """Record one setting and rewrite the CSV."""
        self.rows[key(p)] = {"stage": stage, **{c: getattr(p, c) for c in PARAM_COLUMNS}, **metrics,
                             "images": images, "params": p}
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in self.rows.values():
            w.writerow({k: (f"{v:.6f}" if k in ("mean_iou", "pixel_acc") else v) for k, v in row.items()})
        write_bytes_atomic(self.path, buf.getvalue().encode())

    def ranked(self, settings: list[CRFParams]) -> list[dict]:
        """The recorded rows of ``settings``, best mean IoU first (NaN left out)."""
        rows = {key(p): self.rows[key(p)] for p in settings if self.has(p)}
        return sorted((r for r in rows.values() if not math.isnan(r["mean_iou"])), key=lambda r: -r["mean_iou"])


def run_settings(data: SearchData, settings: list[CRFParams], results: Results, stage: str,
                 workers: int = 1, progress: bool = True) -> None:
    """Evaluate the settings not yet in ``results``, in parallel, recording each as it finishes."""
    todo, seen = [], set()
    for p in settings:
        if not results.has(p) and key(p) not in seen:
            seen.add(key(p))
            todo.append(p)
    if not todo:
        return
    bar = tqdm(total=len(todo), unit="setting", desc=f"crf search ({stage})", disable=not progress,
               dynamic_ncols=True)
    try:
        if workers <= 1 or len(todo) == 1:
            _init_worker(data)
            for p in todo:
                results.add(stage, *_work(p), images=len(data.ids))
                bar.update(1)
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_init_worker,
                                       initargs=(data,))
            try:
                best = -1.0
                for fut in as_completed([pool.submit(_work, p) for p in todo]):
                    p, metrics = fut.result()
                    results.add(stage, p, metrics, images=len(data.ids))
                    bar.update(1)
                    best = max(best, metrics["mean_iou"])
                    bar.set_postfix(best=f"{100 * best:.2f}")
            finally:  # on an error or Ctrl-C, do not wait for the queued settings
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def plot_heatmap(results: Results, coarse: dict[str, list[float]], best: CRFParams, path: str) -> None:
    """Mean IoU over sigma_alpha x sigma_beta, one panel per w1 of the coarse grid, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws, xs, ys = coarse["bi_w"], coarse["bi_rgb_std"], coarse["bi_xy_std"]
    grids = []
    for w in ws:
        g = np.full((len(ys), len(xs)), np.nan)
        for i, sa in enumerate(ys):
            for j, sb in enumerate(xs):
                p = best.replace(bi_w=w, bi_xy_std=sa, bi_rgb_std=sb)
                if results.has(p):
                    g[i, j] = 100 * results.get(p)["mean_iou"]
        grids.append(g)
    vals = np.concatenate([g.ravel() for g in grids])
    vmin, vmax = (np.nanmin(vals), np.nanmax(vals)) if np.isfinite(vals).any() else (0, 1)
    cols = min(3, len(ws))
    rows = (len(ws) + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols + 1, 3.6 * rows + 0.6),
                            squeeze=False, layout="constrained")
    im = None
    for ax, w, g in zip(axs.ravel(), ws, grids):
        im = ax.imshow(g, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel("σβ (bi-rgb-std)")
        ax.set_ylabel("σα (bi-xy-std)")
        ax.set_title(f"w1 = {w:g}")
        for (i, j), v in np.ndenumerate(g):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="w")
    for ax in axs.ravel()[len(ws):]:
        ax.axis("off")
    fig.colorbar(im, ax=axs.ravel().tolist(), label="mean IoU (%)")
    fig.suptitle(f"CRF search, coarse grid (w2={best.pos_w:g}, σγ={best.pos_xy_std:g}); best: w1={best.bi_w:g}, "
                 f"σα={best.bi_xy_std:g}, σβ={best.bi_rgb_std:g}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def open_run(out_dir: str, ids: list[str], force: bool = False) -> Results:
    """Results of ``out_dir`` (``search.csv``), checking the subset is the one they were computed on.

    The subset is kept in ``subset.txt``; a different subset is an error unless ``force``,
    which starts over.
    """
    os.makedirs(out_dir, exist_ok=True)
    subset_path, csv_path = os.path.join(out_dir, "subset.txt"), os.path.join(out_dir, "search.csv")
    if force:
        for p in (subset_path, csv_path):
            if os.path.exists(p):
                os.unlink(p)
    if os.path.isfile(subset_path):
        with open(subset_path) as f:
            old = f.read().split()
        if old != list(ids):
            raise DeepLabError(f"{subset_path}: earlier results were computed on a different subset "
                               f"({len(old)} ids); use the same --n/--seed/--list, another --out, or --force")
    else:
        write_bytes_atomic(subset_path, ("\n".join(ids) + "\n").encode())
    return Results(csv_path)


def run_search(data: SearchData, base: CRFParams, coarse: dict[str, list[float]], results: Results,
               workers: int = 1, fine_div: int = 2, progress: bool = True) -> CRFParams:
    """Reference settings (no CRF, ``base``), the coarse grid, then the fine grid; returns the best."""
    run_settings(data, [base.replace(iters=0), base], results, "reference", workers, progress)
    grid = grid_settings(base, coarse)
    run_settings(data, grid, results, "coarse", workers, progress)
    ranked = results.ranked(grid)
    if not ranked:
        raise DeepLabError("no setting of the coarse grid gave a mean IoU (empty ground truth?)")
    if fine_div > 0:
        grid += grid_settings(base, fine_axes(ranked[0]["params"], coarse, fine_div))
        run_settings(data, grid, results, "fine", workers, progress)
    return results.ranked(grid)[0]["params"]
