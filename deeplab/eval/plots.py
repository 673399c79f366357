"""Charts from evaluation results: trimap curves (Figure 5 b, c) and the CRF search heatmap.

Everything draws with matplotlib's Agg backend into a PNG written atomically (or returns PNG
bytes for embedding in the report).
"""
from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from caffe.util.files import write_bytes_atomic  # noqa: E402


def figure_png(fig, dpi: int = 100) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def trimap_png(results: list[dict], labels: list[str] | None = None) -> bytes:
    """Pixel accuracy and mean IoU against band width, one curve per result (Figure 5 b, c)."""
    curves = [(labels[i] if labels else r.get("name", f"result {i + 1}"), r["trimap"])
              for i, r in enumerate(results) if r.get("trimap")]
    if not curves:
        raise ValueError("none of the results holds trimap curves (evaluate with --trimap)")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "pixel_acc", "(b) Pixelwise accuracy"),
                           (axes[1], "mean_iou", "(c) Mean IoU")):
        for label, t in curves:
            y = np.array([np.nan if v is None else 100 * v for v in t[key]])
            ax.plot(t["widths"], y, marker="o", markersize=3, label=label)
        ax.set_xlabel("Trimap width (pixels)")
        ax.set_ylabel(f"{'Pixelwise accuracy' if key == 'pixel_acc' else 'Mean IoU'} (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=9)
    fig.suptitle("Segmentation quality within a band around object boundaries")
    return figure_png(fig)


def plot_trimap(results: list[dict], out_path: str | os.PathLike, labels: list[str] | None = None) -> None:
    """Write :func:`trimap_png` for several results (e.g. DCNN and DCNN+CRF) to ``out_path``."""
    write_bytes_atomic(out_path, trimap_png(results, labels))


def _best_grid(rows: list[dict], x: str, y: str, value: str, xs: list[float], ys: list[float]) -> np.ndarray:
    """The best ``value`` of ``rows`` at each (y, x) of the grid (NaN where none)."""
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in rows:
        i, j = ys.index(float(r[y])), xs.index(float(r[x]))
        v = float(r[value])
        grid[i, j] = v if np.isnan(grid[i, j]) else max(grid[i, j], v)
    return grid


def crf_heatmap_png(rows: list[dict], x: str = "bi_xy_std", y: str = "bi_rgb_std",
                    value: str = "mean_iou", panel: str | None = None, title: str | None = None) -> bytes:
    """Heatmap of the best ``value`` over the other parameters for each (x, y) of a CRF search;
    with ``panel`` (e.g. ``"bi_w"``), one heatmap per value of that parameter."""
    xs = sorted({float(r[x]) for r in rows})
    ys = sorted({float(r[y]) for r in rows})
    panels = sorted({float(r[panel]) for r in rows}) if panel else [None]
    grids = [_best_grid([r for r in rows if panel is None or float(r[panel]) == w], x, y, value, xs, ys)
             for w in panels]
    finite = np.concatenate([g.ravel() for g in grids])
    finite = finite[np.isfinite(finite)]
    scale = 100 if finite.size and finite.max() <= 1.0 else 1
    vmin, vmax = (finite.min() * scale, finite.max() * scale) if finite.size else (0, 1)
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axs = plt.subplots(nrows, cols, squeeze=False, layout="constrained",
                            figsize=(cols * (1.6 + 0.7 * len(xs)), nrows * (1.2 + 0.5 * len(ys)) + 0.6))
    im = None
    for ax, w, grid in zip(axs.ravel(), panels, grids):
        im = ax.imshow(grid * scale, origin="lower", cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if panel:
            ax.set_title(f"{panel} = {w:g}")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                ax.text(j, i, f"{v * scale:.1f}", ha="center", va="center", fontsize=7, color="w")
    for ax in axs.ravel()[len(panels):]:
        ax.axis("off")
    fig.colorbar(im, ax=axs.ravel().tolist(), label=f"{value} (%)" if scale == 100 else value)
    fig.suptitle(title or "CRF search: best mean IoU over the other parameters")
    return figure_png(fig)
