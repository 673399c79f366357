"""Reading images and label maps, as Caffe's util/io.cpp does for the data layers (no torch here).

One image reader for the engine and the pipeline: ImageSegData, extraction, the CRF stage,
the report and dataset preparation all read pictures with :func:`read_image`.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .. import CaffeError


def read_label(path: str | os.PathLike, num_classes: int | None = None, ignore: int | None = None) -> np.ndarray:
    """Read a label PNG (palette, grey 8-bit or 16-bit) as an H x W array of class indices at
    its real depth: uint8, or uint16 where a 16-bit file holds a value above 255 (nothing wraps).

    With ``num_classes``, every value must be a class (0..num_classes-1) or ``ignore``; anything
    else is an error naming the file and the values. This is the one label rule of the engine
    and the pipeline (ImageSegData, evaluation, the CRF search, the report, dataset preparation).
    """
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "L"):
                lab = np.array(im, dtype=np.uint8)
            elif mode in ("I", "I;16", "I;16B", "I;16L"):
                lab = np.array(im)
                if lab.size and (lab.min() < 0 or lab.max() > 65535):
                    raise CaffeError(f"label file {path} holds values outside 0..65535")
                lab = lab.astype(np.uint8 if not lab.size or lab.max() <= 255 else np.uint16)
            else:
                lab = None
    except FileNotFoundError:
        raise CaffeError(f"label file {path} not found") from None
    except OSError as e:
        raise CaffeError(f"cannot read label file {path}: {e}") from None
    if lab is None:
        raise CaffeError(f"label file {path} is a {mode} image; expected palette or grey class indices")
    if num_classes is not None:
        check_label_values(lab, num_classes, ignore, str(path))
    return lab


def check_label_values(lab: np.ndarray, num_classes: int, ignore: int | None, where: str) -> None:
    """Every value of ``lab`` is a class (0..num_classes-1) or ``ignore``; else an error naming
    ``where`` and the offending values."""
    if lab.size == 0 or int(lab.max()) < num_classes:
        return
    bad = np.unique(lab[lab >= num_classes])
    if ignore is not None:
        bad = bad[bad != ignore]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8].tolist()) + (", ..." if bad.size > 8 else "")
        what = (f"neither a class (0..{num_classes - 1}) nor the ignore value {ignore}" if ignore is not None
                else f"not a class (0..{num_classes - 1})")
        raise CaffeError(f"label file {where} holds value(s) {shown}: {what}")


def read_image(path: str | os.PathLike, color: bool = True, rgb: bool = False) -> np.ndarray:
    """Read an image as Caffe's ReadImageToCVMat does: H x W x 3 uint8 BGR (``rgb``: RGB order),
    or H x W x 1 grey when ``color`` is False; grey files are expanded to 3 channels."""
    import cv2

    path = os.fspath(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise CaffeError(f"image {path} not found") from None
    except OSError as e:
        raise CaffeError(f"cannot read image {path}: {e.strerror or e}") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE) if data.size else None
    _check_jpeg_complete(path, data)
    if image is None:
        raise CaffeError(f"{path} is not a readable image" + (" (empty file)" if not data.size else ""))
    if not color:
        return image[:, :, None]
    return np.ascontiguousarray(image[:, :, ::-1]) if rgb else image


def _check_jpeg_complete(path: str, data: np.ndarray) -> None:
    """A JPEG whose data stops before its end-of-image marker is an error naming the file.

    libjpeg decodes a truncated file with only a warning ("Premature end of JPEG file") and
    fills the rest grey; some OpenCV builds return that picture. A file that ends with the
    marker (trailing padding allowed) is complete; for any other, PIL's decoder (which refuses
    truncated data) decides, so a file with junk after its marker still reads.
    """
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return
    tail = data[-64:].tobytes().rstrip(b"\0\r\n \t")
    if tail.endswith(b"\xff\xd9"):
        return
    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:
        raise CaffeError(f"image {path} is truncated or corrupt ({e})") from None
