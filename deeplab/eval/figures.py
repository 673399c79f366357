"""Picture figures for the report: a Figure 7-like example grid and Figure 2's mean-field maps.

Both return PNG bytes drawn with matplotlib (Agg). Labels are coloured with the class set's
palette, so the colours match every other place labels are drawn.
"""
from __future__ import annotations

import numpy as np

from ..labels import ClassSet, colorize
from .plots import figure_png, plt


def _legend_handles(classes: ClassSet, labels: list[np.ndarray]):
    from matplotlib.patches import Patch

    present = set()
    for lab in labels:
        present.update(np.unique(lab).tolist())
    handles = []
    for idx in sorted(present):
        if idx < classes.num_classes:
            name = classes.names[idx]
        elif idx == classes.ignore:
            name = "void"
        else:
            continue
        handles.append(Patch(facecolor=classes.palette[idx] / 255.0, edgecolor="0.4", label=name))
    return handles


def examples_png(rows: list[dict], classes: ClassSet) -> bytes:
    """Grid with one row per example: image, ground truth, DCNN, DCNN+CRF, and a colour legend.

    Each row dict: ``id``, ``image`` (H x W x 3 RGB or None), ``gt``, ``dcnn``, ``crf`` (label
    arrays or None), optional ``dcnn_iou``, ``crf_iou`` (0..1) and ``note`` (row caption).
    """
    columns = (("image", "Image"), ("gt", "Ground truth"), ("dcnn", "DCNN"), ("crf", "DCNN+CRF"))
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 2.6 * len(rows) + 0.9), squeeze=False)
    shown = []
    for i, r in enumerate(rows):
        for j, (key, title) in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            data = r.get(key)
            if data is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", color="0.5", transform=ax.transAxes)
                ax.set_facecolor("0.95")
            elif key == "image":
                ax.imshow(data)
            else:
                shown.append(data)
                ax.imshow(colorize(data, classes.palette), interpolation="nearest")
            caption = title if i == 0 else ""
            score = r.get(f"{key}_iou")
            if score is not None:
                caption = (caption + "\n" if caption else "") + f"IoU {100 * score:.1f}"
            ax.set_title(caption, fontsize=9)
        axes[i, 0].set_ylabel(f"{r['id']}\n{r.get('note', '')}".strip(), fontsize=8)
    handles = _legend_handles(classes, shown)
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.03 + 0.012 * (len(handles) // 8 + 1), 1, 1))
    return figure_png(fig, dpi=80)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (axis 0)."""
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def meanfield_png(image: np.ndarray | None, scores: np.ndarray, marginals: list[np.ndarray], cls: int,
                  class_name: str) -> bytes:
    """Figure 2: one class's score (top) and belief (bottom) maps, DCNN then each mean-field step.

    ``scores``: C x H x W DCNN scores (before softmax); ``marginals``: the CRF's C x H x W
    beliefs after each iteration. After an iteration the shown score is log belief, which
    equals the iteration's pre-softmax input up to a per-pixel constant.
    """
    steps = [("DCNN", scores[cls], softmax(scores)[cls])]
    for t, q in enumerate(marginals, 1):
        q = np.asarray(q, np.float64)
        steps.append((f"iteration {t}", np.log(np.clip(q[cls], 1e-12, 1.0)), q[cls]))
    per_row = min(len(steps), 6)
    chunks = [steps[k:k + per_row] for k in range(0, len(steps), per_row)]
    offset = 1 if image is not None else 0
    h, w = scores.shape[1:]
    cell = 1.9
    fig, axes = plt.subplots(2 * len(chunks), per_row + offset, squeeze=False,
                             figsize=(cell * (per_row + offset), 2 * len(chunks) * (cell * h / w + 0.3) + 0.4))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    if image is not None:
        axes[0, 0].imshow(image)
        axes[0, 0].set_title("image", fontsize=8)
        axes[0, 0].axis("on")
    for c, chunk in enumerate(chunks):
        for j, (title, score, belief) in enumerate(chunk):
            top, bottom = axes[2 * c, j + offset], axes[2 * c + 1, j + offset]
            top.imshow(score, cmap="jet")
            top.set_title(title, fontsize=8)
            bottom.imshow(belief, cmap="jet", vmin=0, vmax=1)
            top.axis("on")
            bottom.axis("on")
        axes[2 * c, offset].set_ylabel("score", fontsize=9)
        axes[2 * c + 1, offset].set_ylabel("belief", fontsize=9)
    fig.suptitle(f"Score and belief maps for '{class_name}' after each mean-field iteration", fontsize=10)
    fig.tight_layout()
    return figure_png(fig, dpi=80)
