"""Where the CRF stage's inputs live: images and score maps by image id (lists: deeplab.lists)."""
from __future__ import annotations

import os

import numpy as np

from caffe.util.images import read_image
from deeplab import DeepLabError
from deeplab.extract.scoremaps import ScoreMap, load_scores

IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG", ".ppm", ".bmp")


def find_image(images_dir: str, image_id: str) -> str:
    """Path of ``<images_dir>/<id>.jpg`` (or .png, .jpeg, .ppm, .bmp)."""
    for ext in IMAGE_EXTS:
        p = os.path.join(images_dir, image_id + ext)
        if os.path.isfile(p):
            return p
    raise DeepLabError(f"no image {image_id}.jpg or .png in {images_dir}")


def find_scores(scores_dir: str, image_id: str) -> str:
    """Path of ``<scores_dir>/<id>.npy`` or the MAT_WRITE file ``<id>_blob_0.mat``."""
    for name in (image_id + ".npy", image_id + "_blob_0.mat", image_id + ".mat"):
        p = os.path.join(scores_dir, name)
        if os.path.isfile(p):
            return p
    raise DeepLabError(f"no score map {image_id}.npy or {image_id}_blob_0.mat in {scores_dir}")


def check_fresh(path: str, scores_since: int | None) -> None:
    """A score map older than its folder's record (deeplab.provenance) was made from other
    inputs (other weights, say): an error naming it, never a silent mix."""
    if scores_since is not None and os.stat(path).st_mtime_ns < scores_since:
        raise DeepLabError(f"score map {path} predates the current inputs of its folder (made from other weights "
                           f"or net; stale): rerun the extraction for it")


def load_pair(images_dir: str, scores_dir: str, image_id: str,
              scores_since: int | None = None) -> tuple[np.ndarray, ScoreMap]:
    """The RGB image and its full-resolution score map for one id (``scores_since``: see
    :func:`check_fresh`). NaN/Inf scores are an error naming the file."""
    image = read_image(find_image(images_dir, image_id), rgb=True)  # the CRF's lattice is RGB
    path = find_scores(scores_dir, image_id)
    check_fresh(path, scores_since)
    scores = load_scores(path, image_hw=image.shape[:2])
    return image, scores


def scores_record_time(scores_dir: str) -> int | None:
    """When the score folder's record (deeplab.provenance) was written, if it has one."""
    from deeplab.provenance import RECORD

    try:
        return os.stat(os.path.join(scores_dir, RECORD)).st_mtime_ns
    except OSError:
        return None
