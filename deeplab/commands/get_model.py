"""deeplab-get-model (tools/get_model.py): download known weights by name from the model zoo
(models/manifest.json) and verify them.

  deeplab-get-model --list                   show the known names
  deeplab-get-model NAME [NAME ...]          fetch into models/downloads/ (resumable, checksummed)

A file already present and matching its sha256 is not fetched again; one that does not match
is an error naming both digests (the download is discarded, so a rerun starts afresh).
"""
from __future__ import annotations

import argparse

from deeplab.weights import zoo
from deeplab.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    """deeplab-get-model's arguments."""
    p = argparse.ArgumentParser(prog="deeplab-get-model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="model names from the manifest")
    p.add_argument("--list", action="store_true", help="list the known models and exit")
    p.add_argument("--manifest", default=zoo.MANIFEST, help="manifest file; default %(default)s")
    p.add_argument("--dest-dir", default="models/downloads", help="download folder; default %(default)s")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """List the manifest, or fetch and verify each named model, printing its path."""
    a = build_parser().parse_args(argv)
    models = zoo.load_manifest(a.manifest)
    if a.list or not a.names:
        for name, e in models.items():
            check = "sha256 " + e["sha256"][:12] if e.get("sha256") else ("md5" if e.get("md5") else "no checksum")
            print(f"{name:26s} {check:20s} {e.get('description', '')}")
        return 0
    for name in a.names:
        print(zoo.fetch(name, models, a.dest_dir, a.quiet))
    return 0


def run() -> None:
    """The deeplab-get-model console script."""
    run_main(main)
