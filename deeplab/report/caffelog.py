"""Caffe-format training logs: parse them into rows, write CSV, plot loss / accuracy / lr.

Reads the glog-style lines that BVLC Caffe (and tools/train.py) write, e.g.::

    I1125 10:00:00.000000 12345 solver.cpp:228] Iteration 20, loss = 1.234
    I1125 10:00:00.000000 12345 solver.cpp:244]     Train net output #0: accuracy = 0.5
    I1125 10:00:00.000000 12345 sgd_solver.cpp:106] Iteration 20, lr = 0.001
    I1125 10:00:05.000000 12345 solver.cpp:330] Iteration 100, Testing net (#0)
    I1125 10:00:06.000000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.6

Newer Caffe writes ``Iteration 20 (1.5 iter/s, 13.3s/20 iters), loss = 1.234``; both forms are
read. A blob with several values prints several outputs with one name; they become
``name``, ``name_1``, ... . One row per iteration: iteration, seconds (since the "Solving"
line, or the first timestamped line), loss, lr, ``train_<output>``, ``test_<output>``
(``test<k>_<output>`` for test net #k > 0).
"""
from __future__ import annotations

import csv
import datetime
import io
import math
import os
import re
from dataclasses import dataclass, field

from .. import DeepLabError
from caffe.util.files import write_bytes_atomic

_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s+\S+\s+[^\]]*\]\s?(.*)$")
_CREATED = re.compile(r"Log file created at: (\d{4})/")
_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
_LR = re.compile(r"Iteration (\d+), lr = (\S+)")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = (\S+)")


@dataclass
class TrainingLog:
    """Parsed log: ordered column names and one dict per iteration (missing cells absent)."""

    columns: list[str]
    rows: list[dict] = field(default_factory=list)

    def series(self, column: str) -> tuple[list[int], list[float]]:
        """(iterations, values) of the rows that hold ``column``."""
        pts = [(r["iteration"], r[column]) for r in self.rows if r.get(column) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def parse_log(source) -> TrainingLog:
    """Parse a Caffe log (a path, or an iterable of lines) into a :class:`TrainingLog`."""
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError as e:
            raise DeepLabError(f"cannot read training log {source}: {e.strerror}") from None
        name = os.fspath(source)
    else:
        lines, name = list(source), "log"
    rows: dict[int, dict] = {}
    columns = {"iteration": None, "seconds": None, "loss": None, "lr": None}
    year, last_month, start, first = 2000, None, None, None  # 2000: a leap year, so 02/29 parses
    train_it = test_it = None
    test_prefix = "test"
    seen: dict[str, int] = {}

    def row(it: int, when) -> dict:
        r = rows.setdefault(it, {"iteration": it})
        if "seconds" not in r and when is not None:
            r["seconds"] = when
        return r

    def output_name(prefix: str, raw: str, index: int) -> str:
        if index == 0:
            seen.clear()
        k = seen.get(raw, 0)
        seen[raw] = k + 1
        col = f"{prefix}_{raw}" + (f"_{k}" if k else "")
        columns.setdefault(col, None)
        return col

    for line in lines:
        m = _CREATED.search(line)
        if m:
            year, last_month = int(m.group(1)), None
            continue
        g = _GLOG.match(line)
        when, msg = None, line
        if g:
            month, day, hh, mm, ss, frac, msg = g.groups()
            month = int(month)
            if last_month is not None and month < last_month:
                year += 1  # the run crossed New Year
            last_month = month
            try:
                t = datetime.datetime(year, month, int(day), int(hh), int(mm), int(ss),
                                      int(frac[:6].ljust(6, "0")))
            except ValueError:
                t = None
            if t is not None:
                first = first or t
                if start is None and msg.startswith("Solving"):
                    start = t
                when = ((t - (start or first)).total_seconds())
        m = _LOSS.search(msg)
        if m:
            train_it = int(m.group(1))
            row(train_it, when)["loss"] = _number(m.group(2))
            continue
        m = _LR.search(msg)
        if m:
            row(int(m.group(1)), when)["lr"] = _number(m.group(2))
            continue
        m = _TESTING.search(msg)
        if m:
            test_it = int(m.group(1))
            net = int(m.group(2))
            test_prefix = "test" if net == 0 else f"test{net}"
            row(test_it, when)
            continue
        m = _OUTPUT.search(msg)
        if m:
            kind, index, raw, value = m.groups()
            it = train_it if kind == "Train" else test_it
            if it is None:
                continue
            col = output_name("train" if kind == "Train" else test_prefix, raw, int(index))
            row(it, when)[col] = _number(value)
    if not rows:
        raise DeepLabError(f"{name}: no Caffe training lines (Iteration N, loss = ...) found")
    ordered = [c for c in columns if c in ("iteration", "seconds", "loss", "lr")]
    ordered += [c for c in columns if c.startswith("train_")]
    ordered += [c for c in columns if c.startswith("test")]
    return TrainingLog(ordered, [rows[k] for k in sorted(rows)])


def to_csv(log: TrainingLog) -> str:
    """CSV text with a header; missing cells are empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(log.columns)
    for r in log.rows:
        w.writerow(["" if r.get(c) is None else (f"{r[c]:g}" if isinstance(r[c], float) else r[c])
                    for c in log.columns])
    return buf.getvalue()


def write_csv(log: TrainingLog, path: str | os.PathLike) -> None:
    """Write :func:`to_csv` atomically."""
    write_bytes_atomic(path, to_csv(log).encode())


def plot_png(log: TrainingLog, title: str | None = None) -> bytes:
    """Loss, accuracy-type outputs and learning rate against iteration, as PNG bytes."""
    from ..eval.plots import figure_png, plt

    outputs = [c for c in log.columns if c.startswith(("train_", "test"))]
    losses = ["loss"] + [c for c in outputs if "loss" in c]
    others = [c for c in outputs if "loss" not in c]
    panels = [("loss", losses)] + ([("accuracy / outputs", others)] if others else []) + [("learning rate", ["lr"])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, cols) in zip(axes[:, 0], panels):
        drawn = 0
        for c in cols:
            x, y = log.series(c)
            if x:
                style = "o-" if c.startswith("test") else "-"
                ax.plot(x, y, style, markersize=3, label=c, linewidth=1.2)
                drawn += 1
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if label == "learning rate":
            _, y = log.series("lr")
            pos = [v for v in y if v > 0]
            if pos and max(pos) > 10 * min(pos):
                ax.set_yscale("log")
        if drawn:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "not in the log", ha="center", va="center", transform=ax.transAxes)
    axes[-1, 0].set_xlabel("iteration")
    if title:
        axes[0, 0].set_title(title)
    return figure_png(fig)


def write_plot(log: TrainingLog, path: str | os.PathLike, title: str | None = None) -> None:
    """Write :func:`plot_png` atomically."""
    write_bytes_atomic(path, plot_png(log, title))
