"""One self-contained HTML page for an experiment folder (pictures embedded as data URIs).

Reads what exists and notes what does not::

    EXPDIR/log/train.log                      training curves
    EXPDIR/res/<set>/eval_dcnn.json, eval_crf.json (and any other eval_*.json)
                                              Table 3 rows, summary, trimap curves
    EXPDIR/res/<set>/crf_search/search.csv, best.json, heatmap.png
    EXPDIR/res/<set>/dcnn/*.png, crf/*.png    Figure 7-like examples (gains and failures)
    EXPDIR/features/<set>/<id>.npy            Figure 2 (mean-field score/belief maps)
    EXPDIR/report.json                        optional defaults: images, gt, list, classes, set, title

Images, ground truth and list come from options or report.json (paths there are relative
to EXPDIR).
"""
from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import os

import numpy as np

from caffe.util.images import read_image

from .. import USER_ERRORS, DeepLabError
from ..labels import ClassSet, load_classes, read_label
from ..lists import read_ids

CONFIG_KEYS = ("images", "gt", "list", "classes", "set", "title")
METHOD_NAMES = {"dcnn": "DCNN", "crf": "DCNN+CRF"}
IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".bmp", ".JPEG", ".JPG")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #446;padding-bottom:.2em}h2{margin-top:1.8em;color:#335}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .45em}
td{text-align:right}thead th{background:#eef}tbody th{text-align:left;background:#f7f7fb}
.scroll{overflow-x:auto}.note{color:#845;font-style:italic}img{max-width:100%;height:auto;display:block;
margin:.5em 0;border:1px solid #ddd}.found li{font-family:monospace;font-size:.9em}.ok{color:#262}.no{color:#a33}
"""


def data_uri(png: bytes) -> str:
    """PNG bytes -> ``data:image/png;base64,...``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f"<img src='{data_uri(png)}' alt='{html.escape(alt, quote=True)}'>"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def load_config(expdir: str, **options) -> dict:
    """EXPDIR/report.json (paths relative to EXPDIR) overridden by options that are not None."""
    cfg = {k: None for k in CONFIG_KEYS}
    path = os.path.join(expdir, "report.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                loaded = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DeepLabError(f"{path}: cannot read report config ({e})") from None
        if not isinstance(loaded, dict) or set(loaded) - set(CONFIG_KEYS):
            raise DeepLabError(f"{path}: expected an object with keys among {', '.join(CONFIG_KEYS)}")
        for k, v in loaded.items():
            cfg[k] = os.path.join(expdir, v) if k in ("images", "gt", "list") and v else v
    cfg.update({k: v for k, v in options.items() if v is not None})
    return cfg


def _read_rgb(folder: str | None, image_id: str) -> np.ndarray | None:
    if not folder:
        return None
    for ext in IMAGE_EXTS:
        path = os.path.join(folder, image_id + ext)
        if os.path.exists(path):
            return read_image(path, rgb=True)
    return None


def _read_label(folder: str | None, image_id: str, classes: ClassSet) -> np.ndarray | None:
    """``<folder>/<id>.png`` where present; a value neither a class nor void is an error naming it."""
    path = os.path.join(folder, image_id + ".png") if folder else None
    return read_label(path, classes.num_classes, classes.ignore) if path and os.path.exists(path) else None


def _pngs(folder: str) -> list[str]:
    return sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []


# ---------------------------------------------------------------- sections
def _training(expdir: str) -> str:
    from .caffelog import parse_log, plot_png

    path = os.path.join(expdir, "log", "train.log")
    if not os.path.exists(path):
        return _note(f"No training log ({path}).")
    try:
        log = parse_log(path)
    except USER_ERRORS as e:
        return _note(str(e))
    cells = []
    for c in log.columns[1:]:
        its, values = log.series(c)
        if its:
            cells.append(f"<tr><th>{html.escape(c)}</th><td>{values[-1]:.6g}</td><td>at iteration {its[-1]}</td></tr>")
    summary = (f"<p>{len(log.rows)} logged iterations, last {log.rows[-1]['iteration']}. Latest values:</p>"
               f"<table>{''.join(cells)}</table>")
    return summary + _img(plot_png(log, "training curves"), "training curves")


def _results(setdir: str, classes: ClassSet) -> list[dict]:
    """The set's eval_*.json results named DCNN, DCNN+CRF, ...; index-only class names get the set's."""
    from ..eval.evaluate import load_result

    out = []
    names = sorted(f for f in os.listdir(setdir) if f.startswith("eval_") and f.endswith(".json"))
    names.sort(key=lambda f: (f not in ("eval_dcnn.json", "eval_crf.json"), f != "eval_dcnn.json", f))
    for f in names:
        r = load_result(os.path.join(setdir, f))
        key = f[len("eval_"):-len(".json")]
        r["name"] = METHOD_NAMES.get(key, key)
        if r.get("classes") in (None, [str(i) for i in range(len(r["iou"]))]) and len(r["iou"]) == classes.num_classes:
            r["classes"] = list(classes.names)
        out.append(r)
    return out


def _results_section(results: list[dict]) -> str:
    from ..eval.plots import trimap_png
    from ..eval.tables import format_summary, format_table

    if not results:
        return _note("No eval_*.json here (run tools/eval.py --json).")
    try:
        table = format_table(results, "html")
    except ValueError as e:
        table = _note(str(e))
    parts = ["<h3>Per-class IoU (%)</h3><div class='scroll'>", table, "</div>",
             "<h3>Summary (%)</h3>", format_summary(results, "html"), "<h3>Trimap (Figure 5)</h3>"]
    if any(r.get("trimap") for r in results):
        parts.append(_img(trimap_png(results), "trimap curves"))
    else:
        parts.append(_note("No trimap curves in these results."))
    return "".join(parts)


def _search_section(setdir: str) -> str:
    from ..eval.plots import crf_heatmap_png

    d = os.path.join(setdir, "crf_search")
    if not os.path.isdir(d):
        return ""
    parts = ["<h3>CRF parameter search</h3>"]
    best = os.path.join(d, "best.json")
    if os.path.exists(best):
        with open(best) as f:
            parts.append("<p>Best: <code>" + html.escape(f.read().strip()) + "</code></p>")
    heat, path = os.path.join(d, "heatmap.png"), os.path.join(d, "search.csv")
    rows = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("mean_iou") not in (None, "")]
    if os.path.exists(heat):
        with open(heat, "rb") as f:
            parts.append(_img(f.read(), "CRF search heatmap"))
    elif rows:
        try:
            parts.append(_img(crf_heatmap_png(rows), "CRF search heatmap"))
        except (KeyError, ValueError) as e:
            parts.append(_note(f"{path}: cannot draw a heatmap ({e})"))
    if rows:
        top = sorted(rows, key=lambda r: -float(r["mean_iou"]))[:5]
        cols = list(top[0].keys())
        parts.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr></thead>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>"
                               for r in top) + "</table>")
        parts.append(f"<p>{len(rows)} settings tried; the five best are shown.</p>")
    return "".join(parts)


def _per_image(results: list[dict], setdir: str, ids: list[str], cfg: dict, classes: ClassSet) -> dict:
    """{method: {id: mean IoU}} from the eval JSONs, or computed from the PNGs and ground truth."""
    from ..eval.evaluate import _image_scores, image_confusion

    out = {}
    by_name = {r["name"]: r for r in results}
    for key, name in METHOD_NAMES.items():
        scores = (by_name.get(name) or {}).get("per_image") or {}
        if not scores and cfg.get("gt"):
            ignore = classes.ignore
            for i in ids:
                gt, pred = _read_label(cfg["gt"], i, classes), _read_label(os.path.join(setdir, key), i, classes)
                if gt is not None and pred is not None and gt.shape == pred.shape:
                    try:
                        scores[i] = _image_scores(image_confusion(gt, pred, classes.num_classes, ignore, i))
                    except USER_ERRORS:
                        continue
        out[key] = {i: s["mean_iou"] for i, s in scores.items() if s.get("mean_iou") is not None}
    return out


def choose_examples(per_image: dict, ids: list[str], count: int) -> list[tuple[str, str]]:
    """(id, note) pairs ranked by per-image IoU change: the largest CRF gains, then failures.

    Failures are the images the CRF made worst; where it made too few worse, the images with
    the lowest DCNN+CRF IoU. About 3 of every 8 rows are failures, as in Figure 7.
    """
    d, c = per_image.get("dcnn", {}), per_image.get("crf", {})
    both = [i for i in ids if i in d and i in c]
    if not both:
        return [(i, "") for i in ids[:count]]
    delta = sorted(both, key=lambda i: c[i] - d[i])
    n_fail = min(max(1, count * 3 // 8), len(delta) // 2)
    fails = [i for i in delta[:n_fail] if c[i] < d[i]]
    fails += [i for i in sorted(both, key=lambda i: c[i]) if i not in fails][:n_fail - len(fails)]
    gains = [i for i in reversed(delta) if i not in fails][:count - len(fails)]
    note = (lambda i: f"CRF {100 * (c[i] - d[i]):+.1f}")
    return [(i, "gain: " + note(i)) for i in gains] + [(i, "failure: " + note(i)) for i in fails]


def _examples_section(setdir: str, results: list[dict], cfg: dict, classes: ClassSet, count: int):
    from ..eval.figures import examples_png

    have = {k: _pngs(os.path.join(setdir, k)) for k in METHOD_NAMES}
    if not any(have.values()):
        return _note("No dcnn/ or crf/ label PNGs here."), []
    ids = read_ids(cfg["list"]) if cfg.get("list") else sorted(set(have["dcnn"]) | set(have["crf"]))
    ids = [i for i in ids if i in set(have["dcnn"]) | set(have["crf"])]
    per_image = _per_image(results, setdir, ids, cfg, classes)
    chosen = choose_examples(per_image, ids, count)
    rows = [{"id": i, "note": note, "image": _read_rgb(cfg.get("images"), i), "gt": _read_label(cfg.get("gt"), i, classes),
             "dcnn": _read_label(os.path.join(setdir, "dcnn"), i, classes),
             "crf": _read_label(os.path.join(setdir, "crf"), i, classes),
             "dcnn_iou": per_image["dcnn"].get(i), "crf_iou": per_image["crf"].get(i)} for i, note in chosen]
    notes = []
    if not (per_image["dcnn"] and per_image["crf"]):
        notes.append("Not ranked: per-image scores need ground truth (--gt) and both dcnn/ and crf/ labels.")
    if not cfg.get("images"):
        notes.append("No --images folder given, so the input images are not shown.")
    html_ = "".join(_note(n) for n in notes) + _img(examples_png(rows, classes), "examples")
    return html_, rows


def _crf_params(setdir: str):
    """CRF parameters for Figure 2: crf_search/best.json where present, else the defaults."""
    from densecrf import CRFParams

    best = os.path.join(setdir, "crf_search", "best.json")
    if not os.path.exists(best):
        return CRFParams()
    with open(best) as f:
        return CRFParams.from_dict(json.load(f))


def _meanfield_section(expdir: str, set_name: str, setdir: str, rows: list[dict], cfg: dict,
                       classes: ClassSet) -> str:
    from ..eval.figures import meanfield_png, softmax

    feat_dir = os.path.join(expdir, "features", set_name)
    cands = [r for r in rows if os.path.exists(os.path.join(feat_dir, r["id"] + ".npy"))]
    if not cands:
        return _note(f"No score maps in {feat_dir} for the examples above.")
    row = next((r for r in cands if r["image"] is not None), cands[0])
    if row["image"] is None:
        return _note("The mean-field picture needs the input image (--images).")
    try:
        from ..extract.scoremaps import load_scores
        import densecrf
        steps_fn = densecrf.mean_field_steps
    except (ImportError, AttributeError) as e:
        return _note(f"Mean-field picture skipped: {e}.")
    try:
        scores = load_scores(os.path.join(feat_dir, row["id"] + ".npy"), image_hw=row["image"].shape[:2]).scores
        marginals = list(steps_fn(row["image"], scores, _crf_params(setdir)))
    except Exception as e:  # another stage's failure must not sink the whole page
        return _note(f"Mean-field picture skipped: {type(e).__name__}: {e}.")
    if len(marginals) > 1 and np.allclose(marginals[0], softmax(scores), atol=1e-4):
        marginals = marginals[1:]  # element 0 is softmax(scores): the DCNN column already shows it
    ref = row["gt"] if row["gt"] is not None else scores.argmax(0)
    counts = np.bincount(ref[ref < classes.num_classes].ravel(), minlength=classes.num_classes)
    counts[0] = 0 if counts[1:].any() else counts[0]
    cls = int(counts.argmax())
    return (f"<p>Image {html.escape(row['id'])}, class '{html.escape(classes.names[cls])}'.</p>"
            + _img(meanfield_png(row["image"], scores, marginals, cls, classes.names[cls]), "mean field"))


# ---------------------------------------------------------------- page
def build_report(expdir: str, *, images=None, gt=None, list_path=None, classes=None, set_name=None,
                 examples: int = 8, title=None) -> str:
    """The HTML page for EXPDIR (see the module docstring for what is read)."""
    if not os.path.isdir(expdir):
        raise DeepLabError(f"experiment folder {expdir} not found")
    cfg = load_config(expdir, images=images, gt=gt, list=list_path, classes=classes, set=set_name, title=title)
    for key in ("images", "gt", "list"):
        if cfg[key] and not os.path.exists(cfg[key]):
            raise DeepLabError(f"--{key} {cfg[key]} not found")
    cs = load_classes(cfg["classes"] or "voc12")
    name = cfg["title"] or os.path.basename(os.path.abspath(expdir))
    res = os.path.join(expdir, "res")
    sets = sorted(d for d in os.listdir(res) if os.path.isdir(os.path.join(res, d))) if os.path.isdir(res) else []
    if cfg["set"]:
        if cfg["set"] not in sets:
            raise DeepLabError(f"set {cfg['set']!r} not found under {res} (have: {', '.join(sets) or 'none'})")
        sets = [cfg["set"]]
    checked = [os.path.join("log", "train.log")] + [os.path.join("res", s, p) for s in sets for p in (
        "eval_dcnn.json", "eval_crf.json", "dcnn", "crf", os.path.join("crf_search", "search.csv"))]
    checked += [os.path.join("features", s) for s in sets]
    found = "".join(f"<li class='{'ok' if os.path.exists(os.path.join(expdir, p)) else 'no'}'>"
                    f"{'&#10003;' if os.path.exists(os.path.join(expdir, p)) else '&#10007;'} {html.escape(p)}</li>"
                    for p in checked)
    body = [f"<h1>{html.escape(name)}</h1>",
            f"<p>Generated {datetime.datetime.now():%Y-%m-%d %H:%M} from <code>{html.escape(os.path.abspath(expdir))}"
            f"</code>; classes: {html.escape(cs.name)}.</p><ul class='found'>{found}</ul>"]
    if not sets:
        body.append(_note(f"No result sets under {res}."))
    for s in sets:
        setdir = os.path.join(res, s)
        results = _results(setdir, cs)
        body += [f"<h2>Results on {html.escape(s)}</h2>", _results_section(results), _search_section(setdir)]
        ex_html, rows = _examples_section(setdir, results, cfg, cs, examples)
        body += [f"<h2>Examples on {html.escape(s)} (Figure 7)</h2>", ex_html,
                 "<h2>Mean-field iterations (Figure 2)</h2>",
                 _meanfield_section(expdir, s, setdir, rows, cfg, cs)]
    body += ["<h2>Training</h2>", _training(expdir)]
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
