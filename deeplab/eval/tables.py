"""Result tables in the layout of the paper's Table 3: one row per method, classes as columns.

The input is a list of evaluation dicts (``deeplab.eval.evaluate``'s output / tools/eval.py's
JSON). Text tables are aligned for a terminal; markdown and HTML tables bold the best value
of each column when there are several rows, as the paper does.
"""
from __future__ import annotations

import html

# The paper's column headings for the VOC classes.
VOC_SHORT = {
    "background": "bkg", "aeroplane": "aero", "bicycle": "bike", "diningtable": "table",
    "motorbike": "mbike", "pottedplant": "plant", "tvmonitor": "tv",
}


def short_names(names) -> list[str]:
    """Class names as Table 3 headings (VOC abbreviations; other names unchanged)."""
    return [VOC_SHORT.get(n, n) for n in names]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _columns(results: list[dict]) -> tuple[list[str], list[list[str]], list[list[float | None]]]:
    names = results[0].get("classes") or [str(i) for i in range(len(results[0]["iou"]))]
    header = ["Method"] + short_names(names) + ["mean"]
    rows, values = [], []
    for r in results:
        if len(r["iou"]) != len(names):
            raise ValueError(f"result {r.get('name')!r} has {len(r['iou'])} classes, expected {len(names)}")
        vals = list(r["iou"]) + [r["mean_iou"]]
        values.append(vals)
        rows.append([str(r.get("name", "?"))] + [_pct(v) for v in vals])
    return header, rows, values


def _best(values: list[list[float | None]]) -> list[set[int]]:
    """For each value column, the row indices holding its maximum (empty with one row)."""
    if len(values) < 2:
        return [set() for _ in values[0]] if values else []
    out = []
    for j in range(len(values[0])):
        col = [round(v[j], 3) if v[j] is not None else None for v in values]
        top = max((c for c in col if c is not None), default=None)
        out.append({i for i, c in enumerate(col) if c is not None and c == top})
    return out


def format_table(results: list[dict], fmt: str = "text") -> str:
    """Per-class IoU (%) and mean IoU, one row per result: ``fmt`` text, markdown or html."""
    header, rows, values = _columns(results)
    best = _best(values)
    if fmt == "text":
        widths = [max(len(header[j]), *(len(r[j]) for r in rows)) for j in range(len(header))]
        lines = ["  ".join(h.ljust(w) if j == 0 else h.rjust(w) for j, (h, w) in enumerate(zip(header, widths)))]
        for r in rows:
            lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        return "\n".join(lines)
    if fmt == "markdown":
        out = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
        for i, r in enumerate(rows):
            cells = [r[0]] + [f"**{c}**" if i in best[j] else c for j, c in enumerate(r[1:])]
            out.append("| " + " | ".join(cells) + " |")
        return "\n".join(out)
    if fmt == "html":
        out = ["<table class='results'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
               + "</tr></thead><tbody>"]
        for i, r in enumerate(rows):
            cells = [f"<th>{html.escape(r[0])}</th>"]
            cells += [f"<td><b>{c}</b></td>" if i in best[j] else f"<td>{c}</td>" for j, c in enumerate(r[1:])]
            out.append("<tr>" + "".join(cells) + "</tr>")
        return "\n".join(out) + "</tbody></table>"
    raise ValueError(f"unknown table format {fmt!r} (text, markdown, html)")


SUMMARY = (("mean IoU", "mean_iou"), ("pixel acc", "pixel_acc"), ("mean class acc", "mean_class_acc"),
           ("fw IoU", "fw_iou"))


def format_summary(results: list[dict], fmt: str = "text") -> str:
    """Mean IoU, pixel accuracy, mean class accuracy, FW IoU (%) and image count per result."""
    header = ["Method"] + [h for h, _ in SUMMARY] + ["images"]
    rows = [[str(r.get("name", "?"))] + [_pct(r.get(k)) for _, k in SUMMARY] + [str(r.get("images", "?"))]
            for r in results]
    if fmt == "html":
        body = "".join("<tr><th>" + html.escape(r[0]) + "</th>" + "".join(f"<td>{c}</td>" for c in r[1:]) + "</tr>"
                       for r in rows)
        return ("<table class='summary'><thead><tr>" + "".join(f"<th>{h}</th>" for h in header)
                + f"</tr></thead><tbody>{body}</tbody></table>")
    widths = [max(len(header[j]), *(len(r[j]) for r in rows)) for j in range(len(header))]
    lines = [header] + rows
    return "\n".join("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)
