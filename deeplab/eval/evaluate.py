"""Set-level evaluation of label PNGs against ground truth (VOC protocol, trimap bands).

``evaluate`` reads ``<pred_dir>/<id>.png`` and ``<gt_dir>/<id>.png`` for every id, builds one
confusion matrix over the whole set (plus one per trimap band width) in ``jobs`` worker
processes, and returns a JSON-ready dict: per-class IoU and accuracy, the means, the
confusion matrix, trimap curves, per-image scores and the result as a Table 3 row.
"""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from caffe.util.files import why_not, write_bytes_atomic

from .. import USER_ERRORS, DeepLabError
from ..labels import read_label
from ..lists import read_ids  # noqa: F401  (re-exported for tools and tests)
from ..parallel import run_tasks
from .confusion import ConfusionMatrix
from .tables import format_table
from .trimap import TrimapAccumulator, void_distance


def _read(folder: str, image_id: str, what: str, num_classes: int | None = None,
          ignore: int | None = None) -> np.ndarray:
    path = os.path.join(folder, image_id + ".png")
    if not os.path.exists(path):
        raise DeepLabError(f"id {image_id}: {what} {path} {why_not(path)}")
    try:
        return read_label(path, num_classes, ignore)
    except USER_ERRORS as e:
        raise DeepLabError(f"id {image_id}: {e}") from None


def image_codes(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int | None,
                image_id: str = "?") -> tuple[np.ndarray, np.ndarray]:
    """Check one image and return (``gt * C + pred`` as uint16, its C x C confusion matrix).

    Ground truth must hold 0..C-1 or ``ignore``; the prediction 0..C-1 wherever the ground
    truth is not ``ignore``. Anything else is a DeepLabError naming the id.
    """
    if gt.shape != pred.shape:
        raise DeepLabError(f"id {image_id}: prediction is {pred.shape[1]}x{pred.shape[0]} pixels "
                           f"but ground truth is {gt.shape[1]}x{gt.shape[0]}")
    n = num_classes
    ign = -1 if ignore is None else ignore
    if pred.max() >= n:  # allowed only under void: check the slow way
        bad = np.unique(pred[(pred >= n) & (gt != ign)])
        if bad.size:
            raise DeepLabError(f"id {image_id}: prediction holds label {bad.tolist()} outside 0..{n - 1}")
        pred = np.where(gt == ign, 0, pred).astype(np.uint8)
    code = gt.astype(np.uint16)  # 255 * 256 + 255 fits
    code *= n
    code += pred  # pred < n now, so code -> (gt, pred) is one-to-one
    counts = np.bincount(code.ravel(), minlength=256 * n).reshape(256, n)
    rows = counts.sum(axis=1)
    if ign >= 0:
        rows[ign] = 0
    bad = np.flatnonzero(rows[n:]) + n
    if bad.size:
        raise DeepLabError(f"id {image_id}: ground truth holds label {bad.tolist()} outside 0..{n - 1} "
                           f"(and ignore {ignore})")
    mat = counts[:n].copy()
    if 0 <= ign < n:
        mat[ign] = 0
    return code, mat


def image_confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore: int | None,
                    image_id: str = "?") -> np.ndarray:
    """C x C confusion of one image; a value outside 0..C-1 (gt may be ``ignore``) is an error."""
    return image_codes(gt, pred, num_classes, ignore, image_id)[1]


def _image_scores(mat: np.ndarray) -> dict:
    tp = np.diag(mat).astype(np.float64)
    union = mat.sum(0) + mat.sum(1) - tp
    total = mat.sum()
    present = union > 0
    return {"mean_iou": float((tp[present] / union[present]).mean()) if present.any() else None,
            "pixel_acc": float(tp.sum() / total) if total else None}


def _eval_chunk(args):
    """Evaluate one list chunk in a worker process -> (confusion, trimap counts, per-image scores)."""
    return next(_eval_stream(*args, every=len(args[2])))


def _eval_stream(pred_dir, gt_dir, ids, n, ignore, widths, every=16):
    """Yield partial (confusion, trimap counts, per-image scores) every ``every`` images.

    PNG decoding releases the GIL: a reader thread decodes the next images while one is scored.
    """
    def read_pair(image_id):
        return image_id, _read(gt_dir, image_id, "ground truth", n, ignore), _read(pred_dir, image_id, "prediction")

    def fresh():
        return ConfusionMatrix(n, ignore), TrimapAccumulator(n, widths, ignore) if widths else None, {}

    cm, tri, per_image = fresh()
    with ThreadPoolExecutor(max_workers=1) as reader:
        for image_id, gt, pred in reader.map(read_pair, ids):
            _score(image_id, gt, pred, n, ignore, cm, tri, per_image)
            if len(per_image) == every:
                yield cm, tri, per_image
                cm, tri, per_image = fresh()
    if per_image:
        yield cm, tri, per_image


def _score(image_id, gt, pred, n, ignore, cm, tri, per_image) -> None:
    """Add one image to the set's confusion matrix, trimap counts and per-image scores."""
    code, mat = image_codes(gt, pred, n, ignore, image_id)
    cm.mat += mat
    if tri is not None:
        tri.update(gt, pred, void_distance(gt, ignore), code)
    per_image[image_id] = _image_scores(mat)


def _clean(x):
    """Numbers and arrays -> JSON-ready values with NaN as None."""
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def evaluate(pred_dir, gt_dir, ids, num_classes, ignore=255, trimap_widths=None, jobs=1, *,
             class_names=None, name=None, progress=False) -> dict:
    """Evaluate ``<pred_dir>/<id>.png`` against ``<gt_dir>/<id>.png`` over ``ids``.

    Returns the dict tools/eval.py writes as JSON (NaN -> None): name, classes, iou,
    class_acc, mean_iou, pixel_acc, mean_class_acc, fw_iou, pixels, images, confusion,
    trimap (widths, mean_iou, pixel_acc, mean_class_acc, pixels, iou per width) or None,
    per_image {id: {mean_iou, pixel_acc}}, table_markdown. Bad input raises DeepLabError.
    """
    ids = list(ids)
    if not ids:
        raise DeepLabError("no ids to evaluate")
    widths = sorted(set(int(w) for w in trimap_widths)) if trimap_widths else []
    if ignore is None:
        widths = []  # no void label, no band
    pred_dir, gt_dir = os.fspath(pred_dir), os.fspath(gt_dir)
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground truth")):
        if not os.path.isdir(folder):
            raise DeepLabError(f"{what} folder {folder} {why_not(folder, 'folder')}")
    jobs = max(1, min(int(jobs), len(ids)))
    n_chunks = 1 if jobs == 1 else min(len(ids), jobs * 8)
    chunks = [ids[k::n_chunks] for k in range(n_chunks)]
    tasks = [(pred_dir, gt_dir, c, int(num_classes), ignore, widths) for c in chunks if c]
    cm = ConfusionMatrix(num_classes, ignore)
    tri = TrimapAccumulator(num_classes, widths, ignore) if widths else None
    per_image: dict = {}
    bar = tqdm(total=len(ids), desc="eval", unit="img", disable=not progress)
    running = run_tasks(_eval_chunk, tasks, jobs) if jobs > 1 else None
    if running is None:  # partial results every 16 images keep the bar moving without a pool
        results = _eval_stream(pred_dir, gt_dir, ids, int(num_classes), ignore, widths)
    else:
        results = (fut.result() for _, fut in running)
    try:
        for c, t, p in results:
            cm.merge(c)
            if tri is not None:
                tri.merge(t)
            per_image.update(p)
            bar.update(len(p))
    finally:
        bar.close()
        results.close()
        if running is not None:
            running.close()  # stops the workers at once after an error
    r = cm.compute()
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    result = {
        "name": name or os.path.basename(os.path.normpath(pred_dir)),
        "pred_dir": pred_dir, "gt_dir": gt_dir,
        "num_classes": int(num_classes), "ignore": ignore, "classes": names,
        "images": len(ids),
        **{k: r[k] for k in ("mean_iou", "pixel_acc", "mean_class_acc", "fw_iou", "pixels", "iou", "class_acc")},
        "confusion": cm.mat,
        "trimap": tri.compute() if tri is not None else None,
        "per_image": {i: per_image[i] for i in ids},
    }
    result = _clean(result)
    result["table_markdown"] = format_table([result], "markdown")
    return result


def write_result(path: str | os.PathLike, result: dict) -> None:
    """Write an evaluation dict as JSON (atomically; strict JSON, no NaN)."""
    write_bytes_atomic(path, json.dumps(_clean(result), indent=1, allow_nan=False).encode())


def load_result(path: str | os.PathLike) -> dict:
    """Read a JSON written by tools/eval.py, with a clear error for a bad file."""
    try:
        with open(path) as f:
            result = json.load(f)
    except OSError as e:
        raise DeepLabError(f"cannot read evaluation result {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DeepLabError(f"{path}: not an evaluation JSON ({e})") from None
    if not isinstance(result, dict) or "iou" not in result or "mean_iou" not in result:
        raise DeepLabError(f"{path}: not an evaluation JSON (no iou / mean_iou)")
    return result
