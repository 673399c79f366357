"""The fully connected CRF (paper, Section 4.2) as a library: parameters, mean-field inference
and its backends (pydensecrf2 on the CPU, a torch permutohedral lattice on CPU or GPU).

A leaf: it imports numpy, and torch / pydensecrf2 where a backend needs them, never ``caffe``
or ``deeplab`` (tests/densecrf/test_layering.py checks it). The batch stage over dumped score
maps, the parameter search and the ``densecrf`` command are the pipeline's (``deeplab.crf``,
``deeplab.commands.densecrf``); ``python -m densecrf`` enters that command.

    import densecrf
    labels = densecrf.refine(image_rgb, scores, densecrf.CRFParams())

``image_rgb`` is H x W x 3 uint8 in RGB order (the release's PPM files were RGB; the lattice is
not symmetric in feature order); ``scores`` are the network's class scores at full image
resolution, C x H x W (``deeplab.extract.scoremaps.load_scores`` gives them from dumped files). The
unary is -log softmax(scores). No torch needed.
"""
from __future__ import annotations

import numpy as np


from .backends import BACKENDS, DEFAULT_BACKEND, get_backend
from .params import NORMALIZATIONS, CRFParams, CrfError

__all__ = ["BACKENDS", "CRFParams", "CrfError", "check_image_scores", "NORMALIZATIONS", "mean_field_steps", "refine", "unary_from_scores"]


def unary_from_scores(scores: np.ndarray) -> np.ndarray:
    """Unary energy -log softmax(scores) over the class axis (float32 C x H x W)."""
    s = np.asarray(scores, dtype=np.float32)
    m = s.max(axis=0, keepdims=True)
    shifted = s - m
    lse = np.log(np.exp(shifted).sum(axis=0, keepdims=True))
    shifted -= lse
    np.negative(shifted, out=shifted)
    return shifted


def check_image_scores(image: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image (H x W x 3 uint8) and full-resolution scores (C x H x W, finite), checked."""
    image = np.asarray(image)
    scores = np.asarray(scores)
    if image.ndim != 3 or image.shape[2] != 3:
        raise CrfError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise CrfError(f"image must be uint8, got {image.dtype}")
    if scores.ndim != 3:
        raise CrfError(f"scores must be C x H x W, got shape {scores.shape}")
    if scores.shape[1:] != image.shape[:2]:
        raise CrfError(f"scores are {scores.shape[1]}x{scores.shape[2]} but the image is "
                           f"{image.shape[0]}x{image.shape[1]}")
    if scores.shape[0] < 1 or scores.shape[0] > 256:
        raise CrfError(f"scores have {scores.shape[0]} classes; expected 1..256")
    if not np.isfinite(scores).all():
        raise CrfError(f"scores hold {int((~np.isfinite(scores)).sum())} NaN/Inf value(s)")
    return image, scores


def refine(image: np.ndarray, scores: np.ndarray, params: CRFParams | None = None, *,
           return_prob: bool = False, backend: str = DEFAULT_BACKEND):
    """Refine full-resolution scores with the dense CRF; returns H x W uint8 labels.

    With ``return_prob=True`` returns ``(labels, marginals)``, marginals float32 C x H x W.
    """
    image, scores = check_image_scores(image, scores)
    params = params or CRFParams()
    prob = get_backend(backend).marginals(image, unary_from_scores(scores), params)
    labels = prob.argmax(axis=0).astype(np.uint8)
    return (labels, prob) if return_prob else labels


def mean_field_steps(image: np.ndarray, scores: np.ndarray, params: CRFParams | None = None, *,
                     backend: str = DEFAULT_BACKEND) -> list[np.ndarray]:
    """Marginals through mean-field inference: ``params.iters + 1`` C x H x W arrays.

    Element 0 is softmax(scores) (no CRF), element k the marginals after k iterations; the
    last equals ``refine(..., return_prob=True)[1]``.
    """
    image, scores = check_image_scores(image, scores)
    params = params or CRFParams()
    return list(get_backend(backend).steps(image, unary_from_scores(scores), params))
