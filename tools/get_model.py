"""Download known weights by name from the model zoo (models/manifest.json) and verify them.

  get_model.py --list                   show the known names
  get_model.py NAME [NAME ...]          fetch into models/downloads/ (resumable, checksummed)

A file already present and matching its sha256 is not fetched again; one that does not match
is an error naming both digests (the download is discarded, so a rerun starts afresh).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deeplab import zoo  # noqa: E402
from deeplab.cli import run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="model names from the manifest")
    p.add_argument("--list", action="store_true", help="list the known models and exit")
    p.add_argument("--manifest", default=zoo.MANIFEST, help="manifest file; default %(default)s")
    p.add_argument("--dest-dir", default="models/downloads", help="download folder; default %(default)s")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    models = zoo.load_manifest(a.manifest)
    if a.list or not a.names:
        for name, e in models.items():
            check = "sha256 " + e["sha256"][:12] if e.get("sha256") else ("md5" if e.get("md5") else "no checksum")
            print(f"{name:26s} {check:20s} {e.get('description', '')}")
        return 0
    for name in a.names:
        print(zoo.fetch(name, models, a.dest_dir, a.quiet))
    return 0


if __name__ == "__main__":
    run_main(main)
