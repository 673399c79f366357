"""Label maps on disk: the dataset descriptions, colour palettes, reading and writing label PNGs.

A dataset description (``deeplab/data/classes/<name>.txt``, or any file of the same form) is
the one place that says a dataset's classes, their colours, its void/ignore value and so its
class count: one ``index name R G B`` line per class (indices 0, 1, 2, ...), and one line
whose name contains ``void`` or ``ignore`` giving the value labels hold on void pixels (255
for every prepared dataset: VOC's own value, and CamVid's 11 rewritten by preparation). The
tools (``--classes``), dataset preparation and the Makefile (``python -m deeplab.labels NAME
num_classes`` fills the prototxts' ``${NUM_LABELS}``) all read it.

Label PNGs hold class indices (0..C-1, and the void value). Palette PNGs give indices
directly; grey PNGs are read as they are; colour PNGs are refused, since their colours
would have to be guessed back into indices. No torch here.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from caffe.util.files import atomic_path
from caffe.util.images import read_label  # noqa: F401  (label PNGs are read where images are)

from . import USER_ERRORS, DeepLabError

CLASSES_DIR = os.path.join(os.path.dirname(__file__), "data", "classes")


def voc_palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC's bit-interleaved colour map: n x 3 uint8 (index 255 -> 224,224,192)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


@dataclass(frozen=True)
class ClassSet:
    """Class names and display colours of a dataset (index -> name, RGB)."""

    name: str
    names: tuple[str, ...]
    palette: np.ndarray  # 256 x 3 uint8; index 255 is the void colour
    void: int | None = None  # the file's void/ignore value (255 in the shipped files), if it names one

    @property
    def num_classes(self) -> int:
        """How many classes (the void line not counted): the nets' NUM_LABELS."""
        return len(self.names)

    @property
    def ignore(self) -> int:
        """The label value to ignore: the file's void value, 255 where it names none."""
        return 255 if self.void is None else self.void


def load_classes(spec: str) -> ClassSet:
    """Load a dataset description: ``voc12``, ``camvid``, ``synthetic`` or a file of
    ``index name R G B`` lines (see the module doc).

    The void line sets the void value and colour and is not counted as a class.
    """
    path = os.path.join(CLASSES_DIR, f"{spec}.txt") if os.sep not in spec and not spec.endswith(".txt") else spec
    if not os.path.exists(path):
        raise DeepLabError(f"class list {spec!r} not found (use voc12, camvid or a file of 'index name R G B' lines)")
    entries = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                idx, name, rgb = int(parts[0]), parts[1], tuple(int(v) for v in parts[2:5])
                if len(rgb) != 3:
                    raise ValueError
            except (ValueError, IndexError):
                raise DeepLabError(f"{path}:{lineno}: expected 'index name R G B', got {line.strip()!r}") from None
            entries.append((idx, name, rgb))
    names = []
    palette = voc_palette()
    void = None
    for idx, name, rgb in entries:
        if "void" in name.lower() or "ignore" in name.lower():
            if not 0 <= idx < 256:
                raise DeepLabError(f"{path}: void value {idx} does not fit a label PNG (0..255)")
            palette[255] = rgb
            palette[idx] = rgb
            void = idx
            continue
        if idx != len(names):
            raise DeepLabError(f"{path}: class indices must run 0,1,2,... (got {idx} after {len(names) - 1})")
        names.append(name)
        palette[idx] = rgb
    if not names:
        raise DeepLabError(f"{path}: no classes (expected 'index name R G B' lines)")
    if void is not None and void < len(names):
        raise DeepLabError(f"{path}: void value {void} is also a class index (0..{len(names) - 1})")
    return ClassSet(os.path.splitext(os.path.basename(path))[0], tuple(names), palette, void)


def write_label(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an H x W index array as a palette PNG (VOC colours unless given), atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    im.putpalette((voc_palette() if palette is None else np.asarray(palette, np.uint8)).ravel().tolist())
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


def colorize(label: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """H x W indices -> H x W x 3 RGB uint8 for display."""
    pal = voc_palette() if palette is None else np.asarray(palette, np.uint8)
    return pal[np.asarray(label, dtype=np.uint8)]


def _main(argv: list[str]) -> int:
    """``python -m deeplab.labels NAME [FIELD ...]``: print a description's fields for the Makefile."""
    fields = {"num_classes": lambda c: c.num_classes, "ignore": lambda c: c.ignore, "name": lambda c: c.name}
    if not argv or any(f not in fields for f in argv[1:]):
        print(f"usage: python -m deeplab.labels NAME|FILE [{'|'.join(fields)} ...]", file=sys.stderr)
        return 2
    try:
        classes = load_classes(argv[0])
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(" ".join(str(fields[f](classes)) for f in argv[1:] or ["num_classes", "ignore"]))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
