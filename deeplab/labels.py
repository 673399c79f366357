"""Label maps on disk: class names, colour palettes, reading and writing label PNGs.

Label PNGs hold class indices (0..C-1, 255 = void/ignore). Palette PNGs give indices
directly; grey PNGs are read as they are; colour PNGs are refused, since their colours
would have to be guessed back into indices. No torch here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from caffe.files import atomic_path
from caffe.images import read_label  # noqa: F401  (label PNGs are read where images are)

from . import DeepLabError

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
    void: int | None = None  # the file's void/ignore index (VOC 255, CamVid 11), if it names one

    @property
    def num_classes(self) -> int:
        return len(self.names)


def load_classes(spec: str) -> ClassSet:
    """Load ``voc12``, ``camvid``, or a file of ``index name R G B`` lines.

    Indices >= the number of real classes (CamVid's 11, VOC's 255) name the void class:
    they set its colour but are not counted as classes.
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
            palette[255] = rgb
            if 0 <= idx < 256:
                palette[idx] = rgb  # CamVid's void is 11: draw it in the void colour too
                void = idx
            continue
        if idx != len(names):
            raise DeepLabError(f"{path}: class indices must run 0,1,2,... (got {idx} after {len(names) - 1})")
        names.append(name)
        palette[idx] = rgb
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
