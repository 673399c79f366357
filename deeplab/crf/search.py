"""CRF parameter search (paper, Section 5): a coarse grid, then a finer grid around the best.

Every setting is scored by the mean IoU (``deeplab.eval.ConfusionMatrix``, one matrix over
the whole subset) of the CRF's labels on a seeded random subset of images with ground truth.
Settings run in parallel (one setting per worker, images loaded one at a time); each finished
setting is written to the CSV at once, so a rerun resumes where it stopped.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from caffe.util.files import remove_stale_temps, write_bytes_atomic
from deeplab import USER_ERRORS, DeepLabError
from deeplab.cli import parse_range
from deeplab.eval import ConfusionMatrix
from deeplab.eval.plots import crf_heatmap_png
from deeplab.parallel import run_tasks
from deeplab.labels import read_label
from deeplab.provenance import file_stamp, open_output, read_journal, source_identity, text_digest

from densecrf import refine
from .io import check_class_counts, check_fresh, check_same_image, find_image, find_scores, input_stamps, load_pair
from densecrf.params import CRFParams

PARAM_COLUMNS = ("iters", "bi_w", "bi_xy_std", "bi_rgb_std", "pos_w", "pos_xy_std", "normalization")
COLUMNS = ("stage",) + PARAM_COLUMNS + ("mean_iou", "pixel_acc", "images")
# The paper's coarse grid (Section 5): w1 in 5..10, sigma_alpha in 50:10:100, sigma_beta in 3:1:10.
COARSE = {"bi_w": "5:1:10", "bi_xy_std": "50:10:100", "bi_rgb_std": "3:1:10"}


def parse_grid(spec: str) -> list[float]:
    """Grid values in the pipeline's one range syntax (deeplab.cli.parse_range): ``a,b,c``,
    ``start:stop`` (step 1) or MATLAB-style ``start:step:stop``, as the paper writes them."""
    try:
        return parse_range(spec)
    except ValueError as e:
        raise DeepLabError(f"grid {spec!r}: {e}") from None


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
    scores_since: int | None = None  # score maps older than their folder's record are stale
    scores_journal: dict | None = None  # the score folder's per-map record (deeplab.provenance.read_journal)


def choose_subset(ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded random subset of ``n`` ids (all when fewer), in list order."""
    if n >= len(ids):
        return list(ids)
    chosen = set(random.Random(seed).sample(range(len(ids)), n))
    return [i for k, i in enumerate(ids) if k in chosen]


def _entry(data: SearchData, image_id: str) -> dict | None:
    return None if data.scores_journal is None else data.scores_journal.get(image_id)


def check_inputs(data: SearchData) -> None:
    """Fail early, naming the id, when an image, score map or label of the subset is missing,
    a score map is stale or made from an earlier version of its image, or a map's class count
    is not the dataset's."""
    for image_id in data.ids:
        image = find_image(data.images_dir, image_id)
        scores = find_scores(data.scores_dir, image_id)
        check_fresh(scores, data.scores_since)
        check_same_image(image, scores, _entry(data, image_id))
        if not os.path.isfile(os.path.join(data.labels_dir, image_id + ".png")):
            raise DeepLabError(f"no ground truth {image_id}.png in {data.labels_dir}")
    check_class_counts(data.scores_dir, data.ids, data.num_classes, "the dataset description (--classes)")


def input_digest(data: SearchData) -> str:
    """A digest of the stamps (size, date) of every image, score map and label of the subset:
    a changed file starts the search over."""
    stamps = {i: {**(input_stamps(data.images_dir, data.scores_dir, i) or {}),
                  "label": file_stamp(os.path.join(data.labels_dir, i + ".png"))} for i in data.ids}
    return text_digest(json.dumps(stamps, sort_keys=True))


def _load(data: SearchData, image_id: str):
    """(image, scores, ground truth) of one subset image, errors naming it."""
    try:
        image, sm = load_pair(data.images_dir, data.scores_dir, image_id, data.scores_since, _entry(data, image_id))
        gt = read_label(os.path.join(data.labels_dir, image_id + ".png"), data.num_classes, data.ignore_label)
    except USER_ERRORS as e:
        raise DeepLabError(f"id {image_id}: {e}") from None
    if gt.shape != image.shape[:2]:
        raise DeepLabError(f"id {image_id}: ground truth is {gt.shape[0]}x{gt.shape[1]}, "
                           f"the image {image.shape[0]}x{image.shape[1]}")
    return image, sm.scores, gt


def _score(cm: ConfusionMatrix, image_id: str, gt: np.ndarray, pred: np.ndarray) -> None:
    try:
        cm.update(gt, pred)
    except ValueError as e:
        raise DeepLabError(f"{image_id}: {e} (set --ignore-label / --classes to match the labels)") from None


def evaluate(data: SearchData, params: CRFParams) -> ConfusionMatrix:
    """Confusion matrix of the CRF's labels with ``params`` over the subset."""
    cm = ConfusionMatrix(data.num_classes, data.ignore_label)
    for image_id in data.ids:
        image, scores, gt = _load(data, image_id)
        _score(cm, image_id, gt, refine(image, scores, params, backend=data.backend))
    return cm


def kernel_groups(settings: list[CRFParams]) -> list[list[CRFParams]]:
    """The settings grouped by what their kernels depend on (iterations, the three standard
    deviations, normalisation): within a group only the weights w1, w2 differ."""
    groups: dict[tuple, list[CRFParams]] = {}
    for p in settings:
        groups.setdefault((p.iters, p.bi_xy_std, p.bi_rgb_std, p.pos_xy_std, p.normalization), []).append(p)
    return list(groups.values())


def evaluate_group(data: SearchData, group: list[CRFParams]) -> list[ConfusionMatrix]:
    """``evaluate`` for settings that differ only in their kernel weights, with the torch backend
    as one job: each image's lattices are built once and serve every setting of the group."""
    import torch

    from densecrf.backends import get_backend
    from densecrf.torch_backend import build_kernels, mean_field
    from densecrf import check_image_scores, unary_from_scores
    device = get_backend("torch").device
    cms = [ConfusionMatrix(data.num_classes, data.ignore_label) for _ in group]
    cache: dict = {}
    with torch.no_grad():
        for image_id in data.ids:
            image, scores, gt = _load(data, image_id)
            check_image_scores(image, scores)
            kernels = build_kernels([torch.from_numpy(np.ascontiguousarray(image)).to(device)], group[0], "lattice",
                                    cache)
            unary = torch.from_numpy(unary_from_scores(scores)).to(device)
            flat = unary.reshape(unary.shape[0], -1).t()
            for cm, p in zip(cms, group):
                for q in mean_field(flat, kernels, (float(p.pos_w), float(p.bi_w)), p.iters):
                    pass
                pred = q.argmax(1).reshape(image.shape[:2]).to(torch.uint8).cpu().numpy()
                _score(cm, image_id, gt, pred)
    return cms


_DATA: SearchData | None = None


def _init_worker(data: SearchData) -> None:
    global _DATA
    _DATA = data


def _metrics(cm: ConfusionMatrix) -> dict:
    r = cm.compute()
    return {"mean_iou": r["mean_iou"], "pixel_acc": r["pixel_acc"]}


def _work(params: CRFParams) -> list[tuple[CRFParams, dict]]:
    assert _DATA is not None
    return [(params, _metrics(evaluate(_DATA, params)))]


def _work_group(group: list[CRFParams]) -> list[tuple[CRFParams, dict]]:
    assert _DATA is not None
    return [(p, _metrics(cm)) for p, cm in zip(group, evaluate_group(_DATA, group))]


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
                    except (KeyError, TypeError, ValueError, *USER_ERRORS):
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
        stages = {"reference": 0, "coarse": 1, "fine": 2}
        # one order whatever order the workers finished in (a resumed run writes the same bytes)
        for row in sorted(self.rows.values(), key=lambda r: (stages.get(r["stage"], 3), r["stage"], key(r["params"]))):
            # repr: exact, so a resumed search ranks and reports exactly as an uninterrupted one
            w.writerow({k: (repr(float(v)) if k in ("mean_iou", "pixel_acc") else v) for k, v in row.items()})
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
    best = -1.0
    # The torch backend evaluates settings sharing their kernels as one job (lattices built once).
    work, tasks = (_work_group, kernel_groups(todo)) if data.backend == "torch" else (_work, todo)
    try:
        for _, fut in run_tasks(work, tasks, workers, initializer=_init_worker, initargs=(data,)):
            for p, metrics in fut.result():
                results.add(stage, p, metrics, images=len(data.ids))
                bar.update(1)
                best = max(best, metrics["mean_iou"])
            bar.set_postfix(best=f"{100 * best:.2f}")
    finally:
        bar.close()


def plot_heatmap(results: Results, best: CRFParams, path: str) -> None:
    """Mean IoU over sigma_alpha x sigma_beta of the coarse grid, one panel per w1, as a PNG."""
    rows = [r for r in results.rows.values() if r["stage"] == "coarse" and not math.isnan(r["mean_iou"])]
    if not rows:
        return
    title = (f"CRF search, coarse grid (w2={best.pos_w:g}, σγ={best.pos_xy_std:g}); best: w1={best.bi_w:g}, "
             f"σα={best.bi_xy_std:g}, σβ={best.bi_rgb_std:g}")
    write_bytes_atomic(path, crf_heatmap_png(rows, panel="bi_w", title=title))


def open_run(out_dir: str, ids: list[str], force: bool = False, inputs: dict | None = None) -> Results:
    """Results of ``out_dir`` (``search.csv``), bound to the inputs they were computed from.

    ``inputs`` (score folder's identity, ground truth, classes, backend) and the subset are kept
    in the folder's record (deeplab.provenance); when they differ from the recorded ones the
    search starts over with a note, as does ``force``. The subset is also written to
    ``subset.txt``.
    """
    subset_path, csv_path = os.path.join(out_dir, "subset.txt"), os.path.join(out_dir, "search.csv")
    record = open_output(out_dir, "crf_search", {**(inputs or {}), "subset": text_digest("\n".join(ids))},
                         {"ids": len(ids)}, journal=False)
    remove_stale_temps(out_dir, ["subset.txt", "search.csv", "best.json", "heatmap.png"])
    if force or record.changed or not record.fresh(csv_path):
        for p in (subset_path, csv_path):
            if os.path.exists(p):
                os.unlink(p)
    try:
        if not os.path.isfile(subset_path):
            write_bytes_atomic(subset_path, ("\n".join(ids) + "\n").encode())
        results = Results(csv_path)
    except BaseException:
        record.close()
        raise
    results.record = record  # the run's hold on the folder: close() it when done
    return results


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


@dataclass
class Outcome:
    """A finished search: the best setting and its row, the reference rows, every row of the
    grids (same fixed parameters) best first, and where the results went."""

    best: CRFParams
    row: dict
    no_crf: dict
    default: dict
    ranked: list[dict]
    images: int
    best_json: str


def search(data: SearchData, base: CRFParams, coarse: dict[str, list[float]], out_dir: str, *,
           seed: int = 0, list_name: str = "", workers: int = 1, fine_div: int = 2, force: bool = False,
           progress: bool = True) -> Outcome:
    """The whole search into ``out_dir``: check the inputs, run (resuming search.csv), write
    best.json (loadable with CRFParams.from_dict) and heatmap.png."""
    check_inputs(data)
    ids = list(data.ids)
    inputs = {"scores": source_identity(data.scores_dir), "labels": os.path.realpath(data.labels_dir),
              "classes": data.num_classes, "ignore": data.ignore_label, "backend": data.backend,
              "subset_files": input_digest(data)}
    results = open_run(out_dir, ids, force=force, inputs=inputs)
    with results.record:
        return _finish(data, base, coarse, out_dir, results, ids, seed, list_name, workers, fine_div, progress)


def _finish(data, base, coarse, out_dir, results, ids, seed, list_name, workers, fine_div, progress) -> Outcome:
    """``search`` once the folder is held: run the grids, write best.json and the heatmap."""
    best = run_search(data, base, coarse, results, workers=workers, fine_div=fine_div, progress=progress)
    row = results.get(best)
    no_crf, default = results.get(base.replace(iters=0)), results.get(base)
    record = {**best.to_dict(), "mean_iou": row["mean_iou"], "pixel_acc": row["pixel_acc"], "images": len(ids),
              "seed": seed, "list": list_name, "no_crf_mean_iou": no_crf["mean_iou"],
              "default_mean_iou": default["mean_iou"]}
    best_json = os.path.join(out_dir, "best.json")
    record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    write_bytes_atomic(best_json, (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())
    plot_heatmap(results, best, os.path.join(out_dir, "heatmap.png"))
    same_fixed = [r["params"] for r in results.rows.values()
                  if r["params"].replace(bi_w=base.bi_w, bi_xy_std=base.bi_xy_std, bi_rgb_std=base.bi_rgb_std) == base]
    return Outcome(best, row, no_crf, default, results.ranked(same_fixed), len(ids), best_json)


def format_outcome(o: Outcome, base: CRFParams, top: int = 10) -> str:
    """The top settings as a table, the references, and the best as command-line options."""
    lines = [f"top settings on {o.images} images (mean IoU %):",
             f"  {'rank':>4}  {'w1':>6} {'σα':>6} {'σβ':>6}  {'mean IoU':>8}  stage"]
    for i, r in enumerate(o.ranked[:top], 1):
        p = r["params"]
        lines.append(f"  {i:>4}  {p.bi_w:>6g} {p.bi_xy_std:>6g} {p.bi_rgb_std:>6g}  {100 * r['mean_iou']:>8.2f}  "
                     f"{r['stage']}")
    b = o.best
    lines.append(f"  no CRF: {100 * o.no_crf['mean_iou']:.2f}   release default (w1={base.bi_w:g}, "
                 f"σα={base.bi_xy_std:g}, σβ={base.bi_rgb_std:g}): {100 * o.default['mean_iou']:.2f}")
    lines.append(f"best: --bi-w {b.bi_w:g} --bi-xy-std {b.bi_xy_std:g} --bi-rgb-std {b.bi_rgb_std:g} "
                 f"--pos-w {b.pos_w:g} --pos-xy-std {b.pos_xy_std:g}  ({100 * o.row['mean_iou']:.2f}); "
                 f"written to {o.best_json}")
    return "\n".join(lines)
