#!/usr/bin/env python
"""Turn a Caffe-format training log (tools/train.py or BVLC Caffe) into CSV and a PNG of curves.

Examples:
  tools/parse_log.py exp/log/train.log                      # CSV to stdout
  tools/parse_log.py exp/log/train.log --csv train.csv --plot curves.png
"""
from __future__ import annotations

import argparse
import sys

from deeplab.caffelog import parse_log, to_csv, write_csv, write_plot
from deeplab.cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="parse_log.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Parse a Caffe-format training log (lines such as 'Iteration 20, loss = 1.2', "
                    "'Train net output #0: accuracy = 0.5', 'Iteration 20, lr = 0.001', "
                    "'Test net output #0: ...') into one CSV row per iteration: iteration, seconds since "
                    "the start of solving, loss, lr, train_<output>..., test_<output>....",
        epilog=(__doc__ or "").split("\n", 1)[1])
    p.add_argument("log", help="training log file")
    p.add_argument("--csv", metavar="OUT.csv", help="write the CSV here (default: stdout unless --plot is given)")
    p.add_argument("--plot", metavar="OUT.png", help="plot loss, accuracy-type outputs and lr against iteration")
    p.add_argument("--title", help="plot title (default: the log's path)")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    run_main(main)
