"""deeplab-eval (tools/eval.py): evaluate label PNGs against ground truth: VOC-protocol IoU table,
trimap curves, JSON, plot.

Examples:
  deeplab-eval --pred exp/res/val/crf --gt data/voc12/val_labels --list data/voc12/lists/val.txt \\
      --json exp/res/val/eval_crf.json --plot trimap.png -j 2
  deeplab-eval --pred exp/res/val/dcnn --gt data/camvid/CamVid/labels --list data/camvid/list/val.txt --classes camvid
  deeplab-eval --compare exp/res/val/eval_dcnn.json exp/res/val/eval_crf.json --plot trimap.png
"""
from __future__ import annotations

import argparse

from caffe.util.files import check_output_file
from deeplab import DeepLabError
from deeplab.cli import run_main
from deeplab.eval.evaluate import evaluate, load_result, write_result
from deeplab.eval.tables import format_summary, format_table
from deeplab.eval.trimap import parse_widths
from deeplab.labels import load_classes
from deeplab.lists import read_ids


def build_parser() -> argparse.ArgumentParser:
    """deeplab-eval's arguments."""
    p = argparse.ArgumentParser(
        prog="deeplab-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare predicted label PNGs (<pred>/<id>.png) with ground truth (<gt>/<id>.png), "
                    "both read as class indices (palette or grey PNGs). One confusion matrix over the whole "
                    "set (VOC protocol): per-class IoU, mean IoU, pixel accuracy, mean class accuracy, "
                    "frequency-weighted IoU, printed as the paper's Table 3; plus trimap curves "
                    "(accuracy within w pixels of void, Figure 5).",
        epilog="A missing prediction, a size mismatch or a label outside the class range stops the run "
               "with an error naming the id.\n" + (__doc__ or "").split("\n\n", 1)[1])
    p.add_argument("--pred", help="folder of predicted label PNGs")
    p.add_argument("--gt", help="folder of ground-truth label PNGs")
    p.add_argument("--list", help="list file: one id per line, or release-style "
                                  "'/JPEGImages/X.jpg /SegmentationClassAug/X.png' lines (id = X)")
    p.add_argument("--classes", default="voc12", help="dataset description: voc12 (default), camvid, synthetic, "
                                                      "or a file of 'index name R G B' lines")
    p.add_argument("--ignore", type=int, default=None,
                   help="void label to skip (default: the description's void value, 255 for every shipped "
                        "dataset, CamVid's after preparation included)")
    p.add_argument("--trimap", default="1:40", metavar="WIDTHS",
                   help="trimap band widths in pixels: 1:40 (default), 1:2:40 (start:step:stop), 2,5,10, or off")
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
    """Evaluate (or load with --compare), print the table and summary, write JSON and plot."""
    args = build_parser().parse_args(argv)
    for what, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_file(path, what)
    if args.compare:
        results = [load_result(path) for path in args.compare]
    else:
        missing = [opt for opt in ("pred", "gt", "list") if getattr(args, opt) is None]
        if missing:
            raise DeepLabError("missing " + ", ".join("--" + m for m in missing) + " (or use --compare)")
        classes = load_classes(args.classes)
        try:
            widths = parse_widths(args.trimap)
        except ValueError as e:
            raise DeepLabError(f"--trimap: {e}") from None
        result = evaluate(args.pred, args.gt, read_ids(args.list), classes.num_classes,
                          ignore=classes.ignore if args.ignore is None else args.ignore, trimap_widths=widths,
                          jobs=args.jobs, class_names=classes.names, name=args.name, progress=not args.quiet)
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


def run() -> None:
    """The deeplab-eval console script."""
    run_main(main)
