"""Resumable, checksummed downloads (http, https, file) for datasets and model weights.

A download goes to ``<dest>.part``; an interrupted one resumes from there with an HTTP
``Range`` request (or a seek, for ``file://``), and the file is renamed onto ``dest`` only
after its checksum matched. A file already at ``dest`` whose checksum matches is kept.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from .. import USER_ERRORS, DeepLabError

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB chunks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> tuple[str, str] | None:
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    return None


def verify(path: str | os.PathLike, sha256: str | None = None, md5: str | None = None) -> str:
    """Check ``path`` against the given checksum; raise DeepLabError on a mismatch.

    Returns the file's sha256 (computed anyway, so callers can report it when none was known).
    """
    exp = _expected(sha256, md5)
    actual_sha = file_digest(path, "sha256")
    if exp is None:
        return actual_sha
    algo, want = exp
    got = actual_sha if algo == "sha256" else file_digest(path, algo)
    if algo == "sha256" and len(want) < 64:  # a prefix, as torchvision's file names carry
        ok = got.startswith(want)
    else:
        ok = got == want
    if not ok:
        raise DeepLabError(f"{path}: {algo} checksum mismatch (expected {want}, got {got}); "
                           "the file is corrupt or not the one the manifest names")
    return actual_sha


def _open(url: str, offset: int, timeout: float, dest: str):
    """Open ``url`` from byte ``offset``; return (stream, total size or None, resumed?)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = urllib.request.url2pathname(parsed.path) if parsed.scheme else url
        try:
            f = open(path, "rb")
        except OSError as e:
            raise DeepLabError(f"cannot read {url}: {e.strerror}") from None
        total = os.fstat(f.fileno()).st_size
        if 0 < offset <= total:
            f.seek(offset)
            return f, total, True
        return f, total, False
    req = urllib.request.Request(url, headers={"User-Agent": "deeplab-prototxt"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # range past the end: the part file is already complete
            return None, offset, True
        raise DeepLabError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DeepLabError(f"cannot reach {parsed.netloc} to download {url} ({reason}); "
                           f"offline? fetch it by other means and put it at {dest}") from None
    length = resp.headers.get("Content-Length")
    resumed = offset > 0 and resp.status == 206
    total = (int(length) + (offset if resumed else 0)) if length else None
    return resp, total, resumed


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0, quiet: bool = False) -> str:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``), verify it, return its sha256.

    An existing ``dest`` that passes the checksum is kept (no network). A file that fails it
    is removed so the next run starts afresh, and a DeepLabError names both digests.
    """
    dest = os.fspath(dest)
    if os.path.exists(dest):
        if _expected(sha256, md5) is None:
            return file_digest(dest)
        try:
            return verify(dest, sha256, md5)
        except USER_ERRORS:
            os.replace(dest, dest + ".bad")
            if not quiet:
                print(f"{dest} fails its checksum; moved to {dest}.bad and downloading again")
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    stream, total, resumed = _open(url, offset, timeout, dest)
    if stream is not None:
        mode = "ab" if resumed else "wb"
        start = offset if resumed else 0
        try:
            with stream, open(part, mode) as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=os.path.basename(dest), disable=quiet, leave=False,
            ) as bar:
                while True:
                    try:
                        block = stream.read(CHUNK)
                    except OSError as e:
                        raise DeepLabError(f"download of {url} interrupted ({e}); "
                                           f"run again to resume from {part}") from None
                    if not block:
                        break
                    out.write(block)
                    bar.update(len(block))
        except KeyboardInterrupt:
            print(f"\ninterrupted; {part} kept, run again to resume", flush=True)
            raise
    if total is not None and os.path.getsize(part) != total:
        raise DeepLabError(f"download of {url} incomplete ({os.path.getsize(part)} of {total} bytes); "
                           f"run again to resume from {part}")
    try:
        digest = verify(part, sha256, md5)
    except USER_ERRORS:
        os.unlink(part)
        raise
    os.replace(part, dest)
    return digest


def copy_or_link(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dest`` where the file system allows, else copy (atomically)."""
    dest = os.fspath(dest)
    tmp = dest + ".tmp-link"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
