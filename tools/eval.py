#!/usr/bin/env python
"""Evaluate label PNGs against ground truth: VOC-protocol IoU table, trimap curves, JSON, plot.

Examples:
  tools/eval.py --pred exp/res/val/crf --gt data/voc12/val_labels --list data/voc12/lists/val.txt \\
      --json exp/res/val/eval_crf.json --plot trimap.png -j 2
  tools/eval.py --compare exp/res/val/eval_dcnn.json exp/res/val/eval_crf.json --plot trimap.png
"""
from __future__ import annotations

import argparse

from deeplab import DeepLabError
from deeplab.cli import run_main
from deeplab.eval.evaluate import evaluate, load_result, read_ids, write_result
from deeplab.eval.tables import format_summary, format_table
from deeplab.eval.trimap import parse_widths
from deeplab.labels import load_classes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eval.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare predicted label PNGs (<pred>/<id>.png) with ground truth (<gt>/<id>.png), "
                    "both read as class indices (palette or grey PNGs). One confusion matrix over the whole "
                    "set (VOC protocol): per-class IoU, mean IoU, pixel accuracy, mean class accuracy, "
                    "frequency-weighted IoU, printed as the paper's Table 3; plus trimap curves "
                    "(accuracy within w pixels of void, Figure 5).",
        epilog="A missing prediction, a size mismatch or a label outside the class range stops the run "
               "with an error naming the id.\n" + (__doc__ or "").split("\n", 1)[1])
    p.add_argument("--pred", help="folder of predicted label PNGs")
    p.add_argument("--gt", help="folder of ground-truth label PNGs")
    p.add_argument("--list", help="list file: one id per line, or release-style "
                                  "'/JPEGImages/X.jpg /SegmentationClassAug/X.png' lines (id = X)")
    p.add_argument("--classes", default="voc12", help="voc12, camvid, or a file of 'index name R G B' lines "
                                                      "(default voc12)")
    p.add_argument("--ignore", type=int, default=None,
                   help="void label to skip (default: the class file's void index: 255 for voc12, 11 for camvid)")
    p.add_argument("--trimap", default="1:40", metavar="WIDTHS",
                   help="trimap band widths in pixels: 1:40 (default), 1:40:2, 2,5,10, or off")
    p.add_argument("--name", help="row name in the table (default: the --pred folder's name)")
    p.add_argument("--json", metavar="OUT", help="write everything (per-class IoU, means, confusion matrix, "
                                                 "trimap curves, per-image scores, markdown table) as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot pixel accuracy and mean IoU against trimap width")
    p.add_argument("--compare", nargs="+", metavar="JSON",
                   help="instead of evaluating, load earlier --json results and print them as one table "
                        "(and --plot their trimap curves on one chart)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.compare:
        results = [load_result(path) for path in args.compare]
    else:
        missing = [opt for opt in ("pred", "gt", "list") if getattr(args, opt) is None]
        if missing:
            raise DeepLabError("missing " + ", ".join("--" + m for m in missing) + " (or use --compare)")
        classes = load_classes(args.classes)
        ignore = args.ignore if args.ignore is not None else (classes.void if classes.void is not None else 255)
        try:
            widths = parse_widths(args.trimap)
        except ValueError as e:
            raise DeepLabError(f"--trimap: {e}") from None
        result = evaluate(args.pred, args.gt, read_ids(args.list), classes.num_classes, ignore=ignore,
                          trimap_widths=widths, jobs=args.jobs, class_names=classes.names, name=args.name,
                          progress=not args.quiet)
        if args.json:
            write_result(args.json, result)
        results = [result]
    try:
        print(format_table(results, "text"))
    except ValueError as e:
        raise DeepLabError(f"--compare: {e}") from None
    print()
    print(format_summary(results, "text"))
    if args.plot:
        from deeplab.eval.plots import plot_trimap
        try:
            plot_trimap(results, args.plot)
        except ValueError as e:
            raise DeepLabError(f"--plot: {e}") from None
    return 0


if __name__ == "__main__":
    run_main(main)
