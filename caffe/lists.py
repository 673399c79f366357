"""List files as Caffe's data layers read them: one ``image [label]`` line per sample (no torch).

The DeepLab fork's ImageSegData reads ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` lines
(whitespace-separated, paths relative to ``root_folder``); the pipeline's tools read the same
files, or files of bare ids. This is the one reader for all of them: blank lines and ``#``
comments are skipped, Windows line ends (CRLF) and a UTF-8 byte-order mark read as plain
text, and a line of more than two columns is an error (Caffe splits on whitespace, so a file
name with spaces cannot be told from two columns). A list without a sample is an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import CaffeError


@dataclass(frozen=True)
class ListLine:
    """One sample line: where it is, its first column (image) and second (label) if any."""

    source: str
    lineno: int
    image: str
    label: str | None
    text: str  # the line as written, stripped

    @property
    def where(self) -> str:
        """``list.txt:12``, for error messages."""
        return f"{self.source}:{self.lineno}"


def read_list(source: str | os.PathLike) -> list[ListLine]:
    """The sample lines of a list file (see the module doc); errors name the file and line."""
    source = os.fspath(source)
    try:
        with open(source, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        where = "" if os.path.isabs(source) else f" (relative to the working directory {os.getcwd()})"
        raise CaffeError(f"list file {source} not found{where}") from None
    except IsADirectoryError:
        raise CaffeError(f"list file {source} is a folder") from None
    except UnicodeDecodeError as e:
        raise CaffeError(f"list file {source} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CaffeError(f"cannot read list file {source}: {e.strerror}") from None
    out: list[ListLine] = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise CaffeError(f"{source}:{lineno}: expected 'image [label]', got {len(parts)} columns in "
                             f"{line.strip()!r} (file names with spaces are not supported)")
        out.append(ListLine(source, lineno, parts[0], parts[1] if len(parts) == 2 else None, line.strip()))
    if not out:
        raise CaffeError(f"list file {source} lists no images")
    return out
