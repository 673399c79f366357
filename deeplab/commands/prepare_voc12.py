"""deeplab-prepare-voc12 (data/voc12/prepare.py, ``make data-voc12``): prepare PASCAL VOC 2012 + SBD
as the DeepLab release used it.

Downloads VOCtrainval_11-May-2012.tar and SBD's benchmark.tgz (resumable, MD5-checked),
converts SBD's cls/*.mat to palette PNGs, assembles SegmentationClassAug (VOC's own labels
where they exist, with their void band; SBD's elsewhere) and writes the release's lists:
train_aug (10582), train (1464), val (1449), trainval, trainval_aug, and test when the
VOC2012 test archive is given. Default paths are relative to the working directory (the
repository, as make runs it).
"""
from __future__ import annotations

import argparse
import os

from caffe.util.files import check_output_dir
from deeplab.cli import run_main
from deeplab.data import datasets as ds

HERE = os.path.join("data", "voc12")


def build_parser() -> argparse.ArgumentParser:
    """deeplab-prepare-voc12's arguments."""
    p = argparse.ArgumentParser(prog="deeplab-prepare-voc12", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(HERE, "VOCdevkit", "VOC2012"),
                   help="data root written to (JPEGImages/, SegmentationClassAug/); default %(default)s")
    p.add_argument("--list-dir", default=os.path.join(HERE, "list"), help="where the lists go; default %(default)s")
    p.add_argument("--downloads", default=os.path.join(HERE, "downloads"),
                   help="archives and SBD's extracted labels; default %(default)s")
    p.add_argument("--voc-url", default=ds.VOC_URL, help="VOC 2012 trainval archive address")
    p.add_argument("--voc-md5", default=ds.VOC_MD5, help="its MD5 ('' to skip the check)")
    p.add_argument("--sbd-url", default=ds.SBD_URL, help="SBD benchmark.tgz address")
    p.add_argument("--sbd-md5", default=ds.SBD_MD5, help="its MD5 ('' to skip the check)")
    p.add_argument("--test-tar", help="optional VOC2012test.tar (from the evaluation server) for the test list")
    p.add_argument("--force", action="store_true", help="redo extraction and conversion")
    return p


def main(argv: list[str] | None = None) -> int:
    """Download what is missing, then prepare labels and lists."""
    a = build_parser().parse_args(argv)
    for what, path in (("--root", a.root), ("--list-dir", a.list_dir), ("--downloads", a.downloads)):
        check_output_dir(path, f"{what} folder")
    voc_tar, sbd_tgz = ds.fetch_voc12(a.downloads, a.voc_url, a.voc_md5, a.sbd_url, a.sbd_md5)
    ds.prepare_voc12(voc_tar, sbd_tgz, a.root, a.list_dir, a.downloads, a.test_tar, a.force)
    return 0


def run() -> None:
    """The deeplab-prepare-voc12 console script."""
    run_main(main)
