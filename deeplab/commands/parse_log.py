"""deeplab-parse-log (tools/parse_log.py): turn a Caffe-format training log (deeplab-train, caffe train
or BVLC Caffe) into CSV and a PNG of curves.

Examples:
  deeplab-parse-log exp/log/train.log                      # CSV to stdout
  deeplab-parse-log exp/log/train.log --csv train.csv --plot curves.png
"""
from __future__ import annotations

import argparse
import sys

from caffe.util.files import check_output_file
from deeplab.report.caffelog import parse_log, to_csv, write_csv, write_plot
from deeplab.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    """deeplab-parse-log's arguments."""
    p = argparse.ArgumentParser(
        prog="deeplab-parse-log", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Parse a Caffe-format training log (lines such as 'Iteration 20, loss = 1.2', "
                    "'Train net output #0: accuracy = 0.5', 'Iteration 20, lr = 0.001', "
                    "'Test net output #0: ...') into one CSV row per iteration: iteration, seconds since "
                    "the start of solving, loss, lr, train_<output>..., test_<output>....",
        epilog=(__doc__ or "").split("\n\n", 1)[1])
    p.add_argument("log", help="training log file")
    p.add_argument("--csv", metavar="OUT.csv", help="write the CSV here (default: stdout unless --plot is given)")
    p.add_argument("--plot", metavar="OUT.png", help="plot loss, accuracy-type outputs and lr against iteration")
    p.add_argument("--title", help="plot title (default: the log's path)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the log; write CSV and/or plot; say how many iterations."""
    args = build_parser().parse_args(argv)
    for what, path in (("--csv", args.csv), ("--plot", args.plot)):
        if path:
            check_output_file(path, what)
    log = parse_log(args.log)
    if args.csv:
        write_csv(log, args.csv)
    elif not args.plot:
        sys.stdout.write(to_csv(log))
    if args.plot:
        write_plot(log, args.plot, args.title or args.log)
    if args.csv or args.plot:
        last = log.rows[-1]
        print(f"{len(log.rows)} iterations logged (last {last['iteration']}); columns: {', '.join(log.columns)}",
              file=sys.stderr)
    return 0


def run() -> None:
    """The deeplab-parse-log console script."""
    run_main(main)
