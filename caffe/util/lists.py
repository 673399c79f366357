"""List files as Caffe's data layers read them: one ``image [label]`` line per sample (no torch).

The DeepLab fork's ImageSegData reads ``/JPEGImages/x.jpg /SegmentationClassAug/x.png`` lines
(whitespace-separated, paths relative to ``root_folder``); the pipeline's tools read the same
files, or files of bare ids. This is the one reader for all of them: blank lines and ``#``
comments are skipped, Windows line ends (CRLF) and a UTF-8 byte-order mark read as plain
text, and a line of more than two columns is an error (the fork splits on whitespace, so a file
name with spaces cannot be told from two columns). BVLC's ImageData reads a line its own way:
the file name is everything before the last space, the label what follows it
(``read_list(..., last_space=True)``), so names with spaces work there. A list without a
sample is an error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import CaffeError


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


def read_list(source: str | os.PathLike, last_space: bool = False) -> list[ListLine]:
    """The sample lines of a list file (see the module doc); errors name the file and line.
    ``last_space``: split each line at its last space only (BVLC ImageData's rule)."""
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
        if last_space:   # image_data_layer.cpp: line.find_last_of(' ')
            line = line.strip()
            image, _, label = line.rpartition(" ") if " " in line else (line, "", None)
            out.append(ListLine(source, lineno, image, label, line))
            continue
        if len(parts) > 2:
            raise CaffeError(f"{source}:{lineno}: expected 'image [label]', got {len(parts)} columns in "
                             f"{line.strip()!r} (file names with spaces are not supported)")
        out.append(ListLine(source, lineno, parts[0], parts[1] if len(parts) == 2 else None, line.strip()))
    if not out:
        raise CaffeError(f"list file {source} lists no images")
    return out


class ListOrder:
    """Which line of a list a data layer reads at stream position ``pos``: the lines in order, or
    (``shuffle``) a seeded permutation drawn anew for each pass over them, as Caffe's data layers
    shuffle at the start and at every wrap-around. ``rand_skip`` > 0 first skips a seeded random
    number of lines below it, as Caffe's rand_skip; it must leave a line to read."""

    def __init__(self, count: int, shuffle: bool, seed: int, rand_skip: int = 0, where: str = "list"):
        import numpy as np
        self._np = np
        self.count, self.shuffle, self.seed = int(count), bool(shuffle), int(seed) & 0xFFFFFFFF
        self.skip = int(np.random.default_rng([self.seed, 7]).integers(rand_skip)) if rand_skip else 0
        if self.skip >= self.count:
            raise CaffeError(f"{where}: not enough points to skip: rand_skip drew {self.skip} for {self.count} lines")
        self._perm = None  # (pass, permutation) of the last pass asked for

    def __call__(self, pos: int) -> int:
        epoch, k = divmod(pos + self.skip, self.count)
        if not self.shuffle:
            return k
        if self._perm is None or self._perm[0] != epoch:
            rng = self._np.random.default_rng([self.seed, epoch, 0x5EED])
            self._perm = (epoch, rng.permutation(self.count))
        return int(self._perm[1][k])
