"""List files, as the DeepLab release wrote them, read as image ids (no torch here).

A line is an id (``2007_000033``) or release-style ``/JPEGImages/2007_000033.jpg
/SegmentationClassAug/2007_000033.png`` (paths relative to a data root). The lines are read by
the engine's one list reader (``caffe.util.lists``: blank lines, ``#`` comments, CRLF, at most two
columns); here they become ids: a first column that is a path (a ``/`` or an image extension)
gives its file stem, anything else is the id itself. Ids must be unique (outputs are named
after them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from caffe.util.lists import ListLine, read_list

from . import DeepLabError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
_LOOKUP_EXTS = (".jpg", ".png", ".jpeg")


@dataclass(frozen=True)
class ListItem:
    """One image of a list file: its 1-based line number, id and resolved path."""

    lineno: int
    id: str
    path: str


def _is_path(token: str) -> bool:
    return "/" in token or token.lower().endswith(IMAGE_EXTS)


def line_id(line: ListLine) -> str:
    """The image id of a list line (see the module doc)."""
    token = line.image
    ident = os.path.splitext(os.path.basename(token))[0] if _is_path(token) else token
    if not ident:
        raise DeepLabError(f"{line.where}: no image id in {line.text!r}")
    return ident


def _unique(lines: list[ListLine]) -> list[str]:
    ids: list[str] = []
    seen: dict[str, int] = {}
    for line in lines:
        ident = line_id(line)
        if ident in seen:
            raise DeepLabError(f"{line.where}: id {ident!r} repeats line {seen[ident]} (outputs would collide)")
        seen[ident] = line.lineno
        ids.append(ident)
    return ids


def read_ids(path: str | os.PathLike) -> list[str]:
    """Image ids from a list file; a repeated id is an error naming both lines."""
    return _unique(read_list(path))


def read_items(path: str | os.PathLike, root: str | os.PathLike = "") -> list[ListItem]:
    """The images of a list with their paths: a release-style path is joined to ``root``; a
    bare id is ``<root>/X.jpg`` (or ``.png``, ``.jpeg``, whichever exists). The label column
    is not used."""
    root = os.fspath(root)
    lines = read_list(path)
    items = []
    for line, ident in zip(lines, _unique(lines)):
        token = line.image
        if _is_path(token):
            image = os.path.join(root, token.lstrip("/")) if root else token
        else:
            candidates = [os.path.join(root, token + ext) for ext in _LOOKUP_EXTS]
            image = next((c for c in candidates if os.path.exists(c)), candidates[0])
        items.append(ListItem(line.lineno, ident, image))
    return items
