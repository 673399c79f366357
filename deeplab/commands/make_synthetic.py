"""deeplab-make-synthetic (data/synthetic/generate.py, ``make data-synthetic``): generate the
synthetic embedded dataset (the demo's data).

Small VOC-style scenes: 1-3 objects (flat disc, chequered square, flat triangle, striped
ellipse; random colours) on a smooth background; JPEG images, palette PNG labels with a void
band (the description's void value, 255) along object boundaries, release-style lists (train,
val, trainval) plus id lists. The same (--seed, --count, --size) always gives the same files;
a rerun with the same parameters does nothing unless --force. Classes:
deeplab/data/classes/synthetic.txt. The default --out is relative to the working directory.
"""
from __future__ import annotations

import argparse
import os

from caffe.util.files import check_output_dir
from deeplab.cli import run_main
from deeplab.data import synthetic


def build_parser() -> argparse.ArgumentParser:
    """deeplab-make-synthetic's arguments."""
    p = argparse.ArgumentParser(prog="deeplab-make-synthetic", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("data", "synthetic", "out"),
                   help="data root (JPEGImages/, SegmentationClass/, list/); default %(default)s")
    p.add_argument("--seed", type=int, default=1, help="random seed; default %(default)s")
    p.add_argument("--count", type=int, default=400, help="number of images (last fifth is val); default %(default)s")
    p.add_argument("--size", type=int, default=128, help="image side in pixels; default %(default)s")
    p.add_argument("--void-width", type=int, default=3, help="void band width in pixels; default %(default)s")
    p.add_argument("--force", action="store_true", help="regenerate even if the same set exists")
    return p


def main(argv: list[str] | None = None) -> int:
    """Generate the set; print its size and where the lists are."""
    a = build_parser().parse_args(argv)
    check_output_dir(a.out, "--out folder")
    lists = synthetic.generate(a.out, a.seed, a.count, a.size, a.void_width, force=a.force)
    print(f"synthetic set in {a.out}: " + ", ".join(f"{k} {len(v)}" for k, v in lists.items())
          + f" images of {a.size}x{a.size}; lists in {os.path.join(a.out, 'list')}")
    return 0


def run() -> None:
    """The deeplab-make-synthetic console script."""
    run_main(main)
