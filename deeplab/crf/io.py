"""Where the CRF stage's inputs live: images and score maps by image id (lists: deeplab.lists)."""
from __future__ import annotations

import os

import numpy as np

from caffe.util.files import why_not
from caffe.util.images import read_image
from deeplab import DeepLabError
from deeplab.extract.scoremaps import ScoreMap, load_scores, score_classes, sidecar_path
from deeplab.provenance import file_stamp

IMAGE_EXTS = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG", ".ppm", ".bmp")


def _unusable(paths: list[str], what: str) -> None:
    """An entry of ``paths`` that is there but no file (a symbolic link loop or to nowhere, a
    folder) is an error saying so, rather than "not found"."""
    for p in paths:
        if os.path.lexists(p):
            raise DeepLabError(f"{what} {p} {why_not(p)}")


def find_image(images_dir: str, image_id: str) -> str:
    """Path of ``<images_dir>/<id>.jpg`` (or .png, .jpeg, .ppm, .bmp)."""
    for ext in IMAGE_EXTS:
        p = os.path.join(images_dir, image_id + ext)
        if os.path.isfile(p):
            return p
    _unusable([os.path.join(images_dir, image_id + ext) for ext in IMAGE_EXTS], "image")
    raise DeepLabError(f"no image {image_id}.jpg or .png in {images_dir}")


def find_scores(scores_dir: str, image_id: str) -> str:
    """Path of ``<scores_dir>/<id>.npy`` or the MAT_WRITE file ``<id>_blob_0.mat``."""
    names = (image_id + ".npy", image_id + "_blob_0.mat", image_id + ".mat")
    for name in names:
        p = os.path.join(scores_dir, name)
        if os.path.isfile(p):
            return p
    _unusable([os.path.join(scores_dir, name) for name in names], "score map")
    raise DeepLabError(f"no score map {image_id}.npy or {image_id}_blob_0.mat in {scores_dir}")


def check_fresh(path: str, scores_since: int | None) -> None:
    """A score map older than its folder's record (deeplab.provenance) was made from other
    inputs (other weights, say): an error naming it, never a silent mix."""
    if scores_since is not None and os.stat(path).st_mtime_ns < scores_since:
        raise DeepLabError(f"score map {path} predates the current inputs of its folder (made from other weights "
                           f"or net; stale): rerun the extraction for it")


def input_stamps(images_dir: str, scores_dir: str, image_id: str) -> dict | None:
    """The stamps (deeplab.provenance.file_stamp) of the files an id's CRF output is made
    from: its image, its score map (and the map's sidecar); None where one is missing."""
    try:
        image, scores = find_image(images_dir, image_id), find_scores(scores_dir, image_id)
        stamps = {"image": file_stamp(image), "scores": file_stamp(scores)}
        if scores.endswith(".npy"):
            stamps["sidecar"] = file_stamp(sidecar_path(scores))
    except (DeepLabError, OSError):
        return None
    return stamps


def check_same_image(image_path: str, scores_path: str, entry: dict | None) -> None:
    """A score map made from an earlier version of this very image file (the extraction's
    per-output record ``entry`` names the file and its stamp) is an error naming both."""
    if not entry or entry.get("source") != os.path.realpath(image_path):
        return  # made from another file (or unrecorded): nothing to compare
    recorded = entry.get("inputs", {}).get("image")
    if recorded is not None and recorded != file_stamp(image_path):
        raise DeepLabError(f"score map {scores_path} was made from an earlier version of {image_path} (the image "
                           f"changed since the extraction): rerun deeplab-extract for it")


def check_class_counts(scores_dir: str, ids, expected: int | None = None, expected_from: str = "") -> None:
    """All score maps of one run have one class count (``expected``, from ``expected_from``,
    when given; else the first map's): an error naming the first map that differs. Maps that
    are missing or unreadable are left to the per-image error."""
    first = None
    for image_id in ids:
        try:
            path = find_scores(scores_dir, image_id)
        except DeepLabError:
            continue
        classes = score_classes(path)
        if classes is None:
            continue
        if expected is not None and classes != expected:
            raise DeepLabError(f"score map {path} has {classes} classes, {expected_from} has {expected}")
        if first is None:
            first = (path, classes)
        elif classes != first[1]:
            raise DeepLabError(f"score map {path} has {classes} classes, {first[0]} has {first[1]}: the score maps "
                               f"of one run must agree (pass --classes to name the expected count)")


def load_pair(images_dir: str, scores_dir: str, image_id: str, scores_since: int | None = None,
              scores_entry: dict | None = None) -> tuple[np.ndarray, ScoreMap]:
    """The RGB image and its full-resolution score map for one id (``scores_since``: see
    :func:`check_fresh`; ``scores_entry``: the score folder's record of this map, see
    :func:`check_same_image`). NaN/Inf scores are an error naming the file."""
    image_path = find_image(images_dir, image_id)
    path = find_scores(scores_dir, image_id)
    check_fresh(path, scores_since)
    check_same_image(image_path, path, scores_entry)
    image = read_image(image_path, rgb=True)  # the CRF's lattice is RGB
    scores = load_scores(path, image_hw=image.shape[:2])
    return image, scores


def scores_record_time(scores_dir: str) -> int | None:
    """When the score folder's record (deeplab.provenance) was written, if it has one."""
    from deeplab.provenance import RECORD

    try:
        return os.stat(os.path.join(scores_dir, RECORD)).st_mtime_ns
    except OSError:
        return None
