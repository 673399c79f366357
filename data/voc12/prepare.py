"""Prepare PASCAL VOC 2012 + SBD as the DeepLab release used it (``make data-voc12``).

Downloads VOCtrainval_11-May-2012.tar and SBD's benchmark.tgz (resumable, MD5-checked),
converts SBD's cls/*.mat to palette PNGs, assembles SegmentationClassAug (VOC's own labels
where they exist, with their void band; SBD's elsewhere) and writes the release's lists:
train_aug (10582), train (1464), val (1449), trainval, trainval_aug, and test when the
VOC2012 test archive is given.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from deeplab.cli import run_main  # noqa: E402
from deeplab.data import datasets as ds  # noqa: E402
from deeplab.data.download import download  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = p.parse_args(argv)
    voc_tar = os.path.join(a.downloads, os.path.basename(a.voc_url))
    sbd_tgz = os.path.join(a.downloads, os.path.basename(a.sbd_url))
    for url, dest, md5 in ((a.voc_url, voc_tar, a.voc_md5), (a.sbd_url, sbd_tgz, a.sbd_md5)):
        print(f"{os.path.basename(dest)}: {'present' if os.path.exists(dest) else 'downloading from ' + url}")
        download(url, dest, md5=md5 or None)
    ds.prepare_voc12(voc_tar, sbd_tgz, a.root, a.list_dir, a.downloads, a.test_tar, a.force)
    return 0


if __name__ == "__main__":
    run_main(main)
