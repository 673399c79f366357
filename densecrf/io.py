"""Where the CRF stage's inputs live: list files, images and score maps by image id."""
from __future__ import annotations

import os

import numpy as np

from deeplab import DeepLabError
from deeplab.lists import read_ids
from deeplab.scoremaps import ScoreMap, load_scores

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


def read_image_rgb(path: str) -> np.ndarray:
    """Read an image file with OpenCV as H x W x 3 uint8 RGB (grey images are expanded)."""
    import cv2

    im = cv2.imread(path, cv2.IMREAD_COLOR)
    if im is None:
        raise DeepLabError(f"cannot read image {path} (missing, empty or not an image)")
    return np.ascontiguousarray(im[:, :, ::-1])


def load_pair(images_dir: str, scores_dir: str, image_id: str) -> tuple[np.ndarray, ScoreMap]:
    """The RGB image and its full-resolution score map for one id."""
    image = read_image_rgb(find_image(images_dir, image_id))
    scores = load_scores(find_scores(scores_dir, image_id), image_hw=image.shape[:2])
    return image, scores
