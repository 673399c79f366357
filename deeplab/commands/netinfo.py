"""deeplab-netinfo (tools/netinfo.py): show what a network definition computes: per layer the tops'
shapes, parameter counts, and each blob's stride and receptive field, with totals. Nothing is
run, allocated or read besides the prototxt.

Examples:
  deeplab-netinfo prototxt/voc12/DeepLab-LargeFOV/test.prototxt
  deeplab-netinfo prototxt/voc12/DeepLab/train.prototxt --set NUM_LABELS=11 --input 1,3,306,306
  deeplab-netinfo prototxt/camvid/DeepLab-LargeFOV/test.prototxt --json
  deeplab-netinfo train_val.prototxt --phase TRAIN --input data=10,4 --input label=10
"""
from __future__ import annotations

import argparse
import os
import sys

from deeplab.cli import file_placeholders, parse_set, run_main
from deeplab import DeepLabError
from deeplab.netinfo import net_info, parse_input_arg


def default_phase(path: str) -> str:
    """TRAIN for a file whose name contains 'train' (train.prototxt), TEST otherwise."""
    return "TRAIN" if "train" in os.path.basename(path).lower() else "TEST"


def build_parser() -> argparse.ArgumentParser:
    """deeplab-netinfo's arguments."""
    p = argparse.ArgumentParser(
        prog="deeplab-netinfo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stride and receptive field are in input pixels (rules: deeplab/netinfo.py). Placeholders that "
               "only name files (${DATA_ROOT}, ${LIST_DIR}, ${TEST_SET}, ... in source, root_folder, prefix) "
               "need no value: they are shown as <NAME> and nothing is read from them. Placeholders that change "
               "the net (${NUM_LABELS}) need --set.")
    p.add_argument("prototxt", help="network definition (current or the release's V1 syntax)")
    p.add_argument("--phase", choices=["TRAIN", "TEST"], type=str.upper,
                   help="which layers to keep (include/exclude rules); default TRAIN for a file "
                        "whose name contains 'train', else TEST")
    p.add_argument("--input", action="append", metavar="N,C,H,W|TOP=SHAPE",
                   help="N,C,H,W: shape of the first data layer's image top; every data layer's other tops "
                        "follow (labels N x 1 x H x W, or N for Data/ImageData/WindowData/MemoryData). "
                        "TOP=D0,D1,... (repeatable): one data top's own shape, any number of axes (e.g. "
                        "data=10,4 label=10 for HDF5 rows); wins over N,C,H,W. Needed where the shapes come "
                        "from the data (LMDB, list without crop/new size, HDF5, Python data layers), which "
                        "netinfo never reads")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="value for a ${NAME} placeholder (repeatable)")
    p.add_argument("--level", type=int, default=0, help="NetState level for min_level/max_level rules (default 0)")
    p.add_argument("--stage", action="append", default=[], metavar="NAME",
                   help="NetState stage for stage/not_stage rules (repeatable; added to the file's state)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    """Describe the net; print the table (or JSON)."""
    args = build_parser().parse_args(argv)
    shape, tops = None, {}
    for text in args.input or []:
        name, dims = parse_input_arg(text)
        if name is None and shape is not None:
            raise DeepLabError(f"--input N,C,H,W given twice ({'x'.join(map(str, shape))} and {text}); "
                               f"name the other tops: --input TOP=SHAPE")
        if name is None:
            shape = dims
        else:
            tops[name] = dims
    mapping = parse_set(args.set)
    dummies = file_placeholders(args.prototxt, mapping)
    info = net_info(args.prototxt, args.phase or default_phase(args.prototxt), {**dummies, **mapping}, shape,
                    level=args.level, stages=args.stage, input_tops=tops)
    if dummies:
        print("note: placeholders that only name files are shown as dummies (nothing is read): "
              + ", ".join(f"${{{n}}}={v}" for n, v in dummies.items()), file=sys.stderr)
    if hasattr(sys.stdout, "reconfigure"):  # layer names an ASCII terminal cannot show are escaped
        sys.stdout.reconfigure(errors="backslashreplace")
    print(info.to_json() if args.json else info.format_table())
    return 0


def run() -> None:
    """The deeplab-netinfo console script."""
    run_main(main)
