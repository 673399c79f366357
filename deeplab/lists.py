"""List files, as the DeepLab release wrote them (no torch here).

A line is an id (``2007_000033``) or release-style ``/JPEGImages/2007_000033.jpg
/SegmentationClassAug/2007_000033.png`` (paths relative to a data root); the id is the base
name of the first column without its extension. Blank lines and ``#`` comments are skipped.
"""
from __future__ import annotations

import os

from . import DeepLabError


def read_ids(path: str | os.PathLike, allow_empty: bool = False) -> list[str]:
    """Image ids from a list file; a repeated id or a line of more than two columns is an error."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise DeepLabError(f"list file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DeepLabError(f"cannot read list file {path}: {e}") from None
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) > 2:
            raise DeepLabError(f"{path}:{lineno}: expected an id or 'image [label]', got {line.strip()!r}")
        image_id = os.path.splitext(os.path.basename(parts[0]))[0]
        if not image_id:
            raise DeepLabError(f"{path}:{lineno}: no image id in {line.strip()!r}")
        if image_id in seen:
            raise DeepLabError(f"{path}:{lineno}: id {image_id!r} repeats line {seen[image_id]}")
        seen[image_id] = lineno
        ids.append(image_id)
    if not ids and not allow_empty:
        raise DeepLabError(f"list file {path} holds no image ids")
    return ids
