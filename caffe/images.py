"""Reading images and label maps, as Caffe's util/io.cpp does for the data layers (no torch here)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from . import CaffeError


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as an H x W uint8 array of class indices (palette or grey)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "L"):
                return np.array(im, dtype=np.uint8)
            if im.mode in ("I", "I;16"):
                return np.array(im).astype(np.uint8)
            mode = im.mode
    except FileNotFoundError:
        raise CaffeError(f"label file {path} not found") from None
    except OSError as e:
        raise CaffeError(f"cannot read label file {path}: {e}") from None
    raise CaffeError(f"label file {path} is a {mode} image; expected palette or grey class indices")
