"""deeplab-report (tools/report.py): write one self-contained HTML page (pictures embedded) for an
experiment folder.

Reads, where present (missing parts are noted on the page):
  EXPDIR/log/train.log                         training curves (loss, outputs, lr)
  EXPDIR/res/<set>/eval_dcnn.json, eval_crf.json  deeplab-eval --json results: Table 3, trimap
  EXPDIR/res/<set>/crf_search/                 search.csv, best.json, heatmap.png
  EXPDIR/res/<set>/dcnn/*.png, crf/*.png       label PNGs for the Figure 7-like examples
  EXPDIR/features/<set>/<id>.npy               score maps for the Figure 2 mean-field picture
  EXPDIR/report.json                           optional defaults, e.g.
      {"images": "../data/JPEGImages", "gt": "../data/SegmentationClassAug",
       "list": "../data/val.txt", "classes": "voc12", "set": "val", "title": "LargeFOV"}
      (paths relative to EXPDIR; command-line options win)

Examples are ranked by per-image IoU change between DCNN and DCNN+CRF (from the eval JSONs,
or computed from --gt, ignoring the dataset description's void value): the largest gains and
the failures.
"""
from __future__ import annotations

import argparse
import os
import sys

from caffe.util.files import check_output_file, write_bytes_atomic
from deeplab import DeepLabError
from deeplab.cli import run_main
from deeplab.report.html import build_report


def build_parser() -> argparse.ArgumentParser:
    """deeplab-report's arguments."""
    head, tail = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="deeplab-report", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=head, epilog=tail)
    p.add_argument("expdir", help="experiment folder")
    p.add_argument("--images", help="folder of input images <id>.jpg/.png (for the example figures)")
    p.add_argument("--gt", help="folder of ground-truth label PNGs <id>.png")
    p.add_argument("--list", help="list of ids (or release-style lines) to draw examples from")
    p.add_argument("--classes", help="dataset description: voc12 (default), camvid, synthetic, or a file of "
                                     "'index name R G B' lines (names, colours and the void value to ignore)")
    p.add_argument("--set", help="only this set under EXPDIR/res (default: every set)")
    p.add_argument("--examples", type=int, default=8, help="rows in the example grid (default 8)")
    p.add_argument("--title", help="page title (default: the folder's name)")
    p.add_argument("-o", "--out", help="output HTML (default EXPDIR/report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Build the page, write it atomically, say where."""
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.expdir):
        raise DeepLabError(f"experiment folder {args.expdir} not found")
    out = args.out or os.path.join(args.expdir, "report.html")
    check_output_file(out, "-o/--out")
    page = build_report(args.expdir, images=args.images, gt=args.gt, list_path=args.list, classes=args.classes,
                        set_name=args.set, examples=args.examples, title=args.title)
    write_bytes_atomic(out, page.encode("utf-8"))
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB)", file=sys.stderr)
    return 0


def run() -> None:
    """The deeplab-report console script."""
    run_main(main)
