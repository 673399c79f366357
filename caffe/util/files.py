"""Files written whole or not at all, and output locations checked before long work starts.

``atomic_path`` writes through a temporary file beside the target (``.<name>.<random>.tmp<ext>``),
renamed onto it only on success, so a crash, a kill or a full disk never leaves a partial
file and never touches the previous one. A write that fails for a reason of the place
(disk full, read-only, permission, a file where a folder should be) raises ``WriteError``,
one line naming the path and the reason. ``check_output_dir`` / ``check_output_file`` say
the same before any work is done; ``remove_stale_temps`` removes the temporary files of a
killed run (our own naming only).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import time
from typing import Iterable, Iterator

from .. import CaffeError

_UMASK = os.umask(0)
os.umask(_UMASK)

# errno values that are about where we write, not about what: reported as WriteError.
_PLACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                 errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOENT, errno.EIO, errno.ENAMETOOLONG}


class WriteError(CaffeError):
    """An output could not be written (disk full, read-only, not a folder, ...). A batch stops on
    it rather than failing one item after another."""


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    return e.strerror.lower() if e.strerror else str(e)


def _blocking_file(path: str) -> str | None:
    """The nearest existing ancestor of ``path`` (itself included) when it is not a folder."""
    p = os.path.abspath(path)
    while True:
        if os.path.exists(p):
            return None if os.path.isdir(p) else p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> str:
    """Create the folder ``path`` if needed and make sure a file can be written in it; else a
    WriteError naming the path and the reason (a file in the way, read-only, cannot create).
    Call it at start-up, before long work. Returns the path."""
    path = os.fspath(path)
    if not path:
        raise WriteError(f"{what}: empty path")
    blocker = _blocking_file(path)
    if blocker is not None:
        detail = "is a file" if blocker == os.path.abspath(path) else f"is below the regular file {blocker}"
        raise WriteError(f"{what} {path} {detail}, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{what} {path}: cannot create it ({_reason(e)})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=path)
    except OSError as e:
        raise WriteError(f"{what} {path} is not writable ({_reason(e)})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def why_not(path: str | os.PathLike, want: str = "file") -> str:
    """Why ``path`` is not an existing file (``want="folder"``: folder), in words for a
    message after the path: "not found", "is a symbolic link loop", "is a broken symbolic
    link (to T)", "is a folder, not a file", ...; "" when it is one."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is (or goes through) a symbolic link loop"
        if e.errno == errno.ENOENT and os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found"
        return f"cannot be read ({_reason(e)})"
    if want == "folder" and not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if want == "file" and stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    return ""


def check_output_file(path: str | os.PathLike, what: str = "output file") -> str:
    """Make sure the file ``path`` can be written (its folder created and writable, the path
    itself not a folder); else a WriteError naming the path and the reason. Returns the path."""
    path = os.fspath(path)
    if not path:
        raise WriteError(f"{what}: empty path")
    if os.path.isdir(path):
        raise WriteError(f"{what} {path} is a folder, not a file")
    check_output_dir(os.path.dirname(path) or ".", f"{what} {path}: folder")
    return path


# atomic_path's temporary names: "." + base + "." + mkstemp's 8 random [a-z0-9_] + ".tmp" + ext.
_TEMP = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp(\.[^./]*)?")


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] | None = None,
                       min_age: float = 0.0, prefix: str = "") -> int:
    """Remove the temporary files ``atomic_path`` leaves when its process is killed: those of
    the final file names ``names`` (e.g. ``x.npy``) in ``folder``, or every one of our naming
    when ``names`` is None (only where no other process writes the same folder), in either case
    only those whose final name starts with ``prefix``; with ``min_age``, only those older than
    that many seconds. Returns how many were removed."""
    folder = os.fspath(folder)
    try:
        entries = [e for e in os.listdir(folder) if e.startswith(".") and ".tmp" in e]
    except OSError:
        return 0
    if not entries:
        return 0
    wanted = None if names is None else set(names)
    removed = 0
    now = time.time()
    for entry in entries:
        m = _TEMP.fullmatch(entry)
        final = m.group(1) + (m.group(2) or "") if m else ""
        if m and final.startswith(prefix) and (wanted is None or final in wanted):
            full = os.path.join(folder, entry)
            with contextlib.suppress(FileNotFoundError):
                if min_age and now - os.stat(full).st_mtime < min_age:
                    continue
                os.unlink(full)
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix so writers that look at the extension
    (cv2.imwrite, np.save, savemat) behave. Nothing half-written is ever left at ``path``
    and a failed write leaves the previous file as it was; a failure of the place (disk
    full, read-only, ...) is a WriteError naming ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        base, ext = os.path.splitext(os.path.basename(path))
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
    except OSError as e:
        blocker = _blocking_file(directory)
        why = f"{blocker} is a regular file, not a folder" if blocker else _reason(e)
        raise WriteError(f"cannot write {path}: {why}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _PLACE_ERRORS:
            raise WriteError(f"cannot write {path}: {_reason(e)}") from None
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
