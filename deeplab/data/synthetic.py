"""The synthetic embedded dataset: small VOC-style scenes of shapes, for the demo and tests.

Each image holds 1-3 objects on a smooth background. Classes are told apart by shape and
texture: a flat disc, a chequered square, a flat triangle, a striped ellipse; object colours
are random, so colour alone says nothing about the class. Objects have crisp colour edges, and labels carry a void
band (255) along every object boundary as VOC's do. Everything follows from (seed, index,
size), so a given (seed, count, size) always gives the same files.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .. import DeepLabError
from caffe.util.files import atomic_path
from ..labels import load_classes, write_label
from .datasets import write_list

CLASSES = ("background", "disc", "square", "triangle", "stripes")
TEXTURED = {2: "checks", 4: "stripes"}
IMAGE_FMT = "/JPEGImages/{}.jpg"
LABEL_FMT = "/SegmentationClass/{}.png"


def _colour(rng: np.random.Generator, *away_from: np.ndarray) -> np.ndarray:
    """A random RGB colour at least 90 (Euclidean) from each colour in ``away_from``."""
    c = rng.integers(0, 256, 3).astype(np.float32)
    for _ in range(50):
        if all(np.linalg.norm(c - a) > 90 for a in away_from):
            return c
        c = rng.integers(0, 256, 3).astype(np.float32)
    return c


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour linear gradient with soft low-frequency blotches."""
    a, b = _colour(rng), _colour(rng)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(theta) + (yy - 0.5) * np.sin(theta), 0, 1)[..., None]
    img = a * (1 - t) + b * t
    blotch = cv2.resize(rng.normal(0, 18, (4, 4, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    return img + blotch


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """Binary mask of one object of class ``cls``, placed at random (may cross the border)."""
    mask = np.zeros((size, size), np.uint8)
    r = rng.uniform(0.14, 0.27) * size
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    rot = rng.uniform(0, 2 * np.pi)
    if cls == 1:  # disc
        cv2.circle(mask, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
    elif cls in (2, 3):  # square (4 corners) or triangle (3 corners), rotated
        k = 4 if cls == 2 else 3
        ang = rot + np.arange(k) * 2 * np.pi / k
        pts = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:  # stripes: an ellipse (texture makes the class)
        axes = (int(round(r)), int(round(r * rng.uniform(0.55, 0.9))))
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), axes, np.degrees(rot), 0, 360, 1, -1)
    return mask.astype(bool)


def _texture(rng: np.random.Generator, kind: str, size: int, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Full-image two-colour texture at a random angle: ``stripes`` (period 5-9 px) or ``checks``."""
    period, theta = rng.uniform(5, 9), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx * np.cos(theta) + yy * np.sin(theta)) / period
    on = (u - np.floor(u)) < 0.5
    if kind == "checks":
        v = (-xx * np.sin(theta) + yy * np.cos(theta)) / period
        on ^= (v - np.floor(v)) < 0.5
    return np.where(on[..., None], c1, c2)


def void_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width // 2`` of a boundary between different instances (incl. background)."""
    if width <= 0:
        return np.zeros(instances.shape, bool)
    k = np.ones((width, width), np.uint8)
    inst = instances.astype(np.uint8)
    return cv2.dilate(inst, k) != cv2.erode(inst, k)


def render(seed: int, index: int, size: int, void_width: int = 3,
           void: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the set ``seed``: (H x W x 3 RGB uint8, H x W uint8 label)."""
    rng = np.random.default_rng([seed, index])
    img = _background(rng, size)
    instances = np.zeros((size, size), np.uint8)
    classes = [0]
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(rng, cls, size)
        if mask.sum() < 16:
            continue
        k = len(classes)
        local = img[mask].mean(0)
        if cls in TEXTURED:
            c1 = _colour(rng, local)
            paint = _texture(rng, TEXTURED[cls], size, c1, _colour(rng, local, c1))[mask]
        else:
            paint = _colour(rng, local)
        img[mask] = paint
        instances[mask] = k
        classes.append(cls)
    lut = np.zeros(256, np.uint8)
    for k, cls in enumerate(classes):
        lut[k] = cls
    label = lut[instances]
    label[void_band(instances, void_width)] = void
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def image_ids(count: int) -> list[str]:
    """Ids of a set of ``count`` images."""
    return [f"synth_{i:05d}" for i in range(count)]


def split(count: int) -> dict[str, list[str]]:
    """Train / val id lists: the last fifth (at least one image) is val."""
    ids = image_ids(count)
    n_val = max(1, count // 5)
    return {"train": ids[:-n_val], "val": ids[-n_val:], "trainval": ids}


def generate(out: str, seed: int = 1, count: int = 400, size: int = 128, void_width: int = 3,
             quality: int = 92, force: bool = False, quiet: bool = False) -> dict[str, list[str]]:
    """Write JPEGImages/, SegmentationClass/ and list/ under ``out``; skip if already made.

    A stamp (``out/synthetic.json``) records the parameters; outputs of the same parameters are
    kept unless ``force``, other parameters regenerate everything.
    """
    if count < 2 or size < 32:
        raise DeepLabError(f"synthetic set needs count >= 2 and size >= 32 (got count {count}, size {size})")
    params = {"seed": seed, "count": count, "size": size, "void_width": void_width, "quality": quality,
              "classes": list(CLASSES)}
    stamp = os.path.join(out, "synthetic.json")
    lists = split(count)
    if not force and os.path.exists(stamp):
        with open(stamp) as f:
            if json.load(f) == params:
                return lists
    classes = load_classes("synthetic")
    for i, name in enumerate(tqdm(image_ids(count), desc="synthetic", unit=" images", disable=quiet)):
        img, label = render(seed, i, size, void_width, classes.ignore)
        with atomic_path(os.path.join(out, "JPEGImages", f"{name}.jpg")) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=quality)
        write_label(os.path.join(out, "SegmentationClass", f"{name}.png"), label, classes.palette)
    for name, ids in lists.items():
        write_list(os.path.join(out, "list"), name, ids, IMAGE_FMT, LABEL_FMT)
    with atomic_path(stamp) as tmp, open(tmp, "w") as f:
        json.dump(params, f, indent=1)
    return lists
