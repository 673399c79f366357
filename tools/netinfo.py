"""Show what a network definition computes: per layer the tops' shapes, parameter counts, and
each blob's stride and receptive field, with totals. Nothing is run or allocated.

Examples:
  .venv/bin/python tools/netinfo.py prototxt/voc12/DeepLab/train.prototxt \\
      --set DATA_ROOT=. --set LIST_DIR=. --set TRAIN_SET=train --set NUM_LABELS=21 --input 1,3,306,306
  .venv/bin/python tools/netinfo.py prototxt/voc12/DeepLab-LargeFOV/test.prototxt --json \\
      --set DATA_ROOT=. --set LIST_DIR=. --set TEST_SET=val --set FEATURE_DIR=out --set NUM_LABELS=21
"""
from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab.cli import parse_set, run_main  # noqa: E402
from deeplab.netinfo import net_info, parse_input_shape  # noqa: E402


def default_phase(path: str) -> str:
    """TRAIN for a file whose name contains 'train' (train.prototxt), TEST otherwise."""
    return "TRAIN" if "train" in os.path.basename(path).lower() else "TEST"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netinfo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stride and receptive field are in input pixels (rules: deeplab/netinfo.py). "
               "A net's MatWrite id list need not exist.")
    parser.add_argument("prototxt", help="network definition (current or the release's V1 syntax)")
    parser.add_argument("--phase", choices=["TRAIN", "TEST"], type=str.upper,
                        help="which layers to keep (include/exclude rules); default TRAIN for a file "
                             "whose name contains 'train', else TEST")
    parser.add_argument("--input", metavar="N,C,H,W",
                        help="shape of the first data layer's image top (its label top follows), "
                             "instead of batch_size and crop_size from the prototxt")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="value for a ${NAME} placeholder (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    shape = parse_input_shape(args.input) if args.input else None
    info = net_info(args.prototxt, args.phase or default_phase(args.prototxt), parse_set(args.set), shape)
    print(info.to_json() if args.json else info.format_table())
    return 0


if __name__ == "__main__":
    run_main(main)
