#!/usr/bin/env python
"""Write one self-contained HTML page (pictures embedded) for an experiment folder.

Reads, where present (missing parts are noted on the page):
  EXPDIR/log/train.log                         training curves (loss, outputs, lr)
  EXPDIR/res/<set>/eval_dcnn.json, eval_crf.json  tools/eval.py --json results: Table 3, trimap
  EXPDIR/res/<set>/crf_search/                 search.csv, best.json, heatmap.png
  EXPDIR/res/<set>/dcnn/*.png, crf/*.png       label PNGs for the Figure 7-like examples
  EXPDIR/features/<set>/<id>.npy               score maps for the Figure 2 mean-field picture
  EXPDIR/report.json                           optional defaults, e.g.
      {"images": "../data/JPEGImages", "gt": "../data/SegmentationClassAug",
       "list": "../data/val.txt", "classes": "voc12", "set": "val", "title": "LargeFOV"}
      (paths relative to EXPDIR; command-line options win)

Examples are ranked by per-image IoU change between DCNN and DCNN+CRF (from the eval JSONs,
or computed from --gt): the largest gains and the failures.
"""
from __future__ import annotations

import argparse
import os
import sys

from caffe.files import write_bytes_atomic
from deeplab.cli import run_main
from deeplab.report import build_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="report.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n", 1)[0], epilog=__doc__.split("\n", 1)[1])
    p.add_argument("expdir", help="experiment folder")
    p.add_argument("--images", help="folder of input images <id>.jpg/.png (for the example figures)")
    p.add_argument("--gt", help="folder of ground-truth label PNGs <id>.png")
    p.add_argument("--list", help="list of ids (or release-style lines) to draw examples from")
    p.add_argument("--classes", help="voc12 (default), camvid, or a class file")
    p.add_argument("--set", help="only this set under EXPDIR/res (default: every set)")
    p.add_argument("--examples", type=int, default=8, help="rows in the example grid (default 8)")
    p.add_argument("--title", help="page title (default: the folder's name)")
    p.add_argument("-o", "--out", help="output HTML (default EXPDIR/report.html)")
    args = p.parse_args(argv)
    page = build_report(args.expdir, images=args.images, gt=args.gt, list_path=args.list, classes=args.classes,
                        set_name=args.set, examples=args.examples, title=args.title)
    out = args.out or os.path.join(args.expdir, "report.html")
    write_bytes_atomic(out, page.encode("utf-8"))
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_main(main)
