"""What every command-line tool shares: one-line errors, atomic writes, --set parsing."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Callable, Iterator

from . import DeepLabError

_UMASK = os.umask(0)
os.umask(_UMASK)


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a tool's ``main``; a user error prints ``error: ...`` on one line and exits 2."""
    try:
        code = main(argv)
    except DeepLabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix so writers that look at the extension
    (cv2.imwrite, np.save, savemat) behave. Nothing half-written is ever left at ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def parse_set(items: list[str] | None) -> dict[str, str]:
    """Turn ``--set NAME=VALUE`` items into a mapping (for ``${NAME}`` placeholders)."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise DeepLabError(f"--set expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``--shard K/N`` (1-based K) into ``(K - 1, N)``; None means the whole list."""
    if not text:
        return 0, 1
    k, sep, n = text.partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not sep or n_i < 1 or not 1 <= k_i <= n_i:
        raise DeepLabError(f"--shard expects K/N with 1 <= K <= N, got {text!r}")
    return k_i - 1, n_i
