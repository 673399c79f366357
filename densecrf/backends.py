"""CRF inference backends, looked up by name in ``BACKENDS``.

A backend is any object with two methods, both taking an RGB uint8 H x W x 3 image, a
float32 C x H x W unary energy (-log probabilities) and a ``CRFParams``:

* ``marginals(image, unary, params)`` -> float32 C x H x W marginals after ``params.iters``
  mean-field iterations;
* ``steps(image, unary, params)`` -> iterator over ``params.iters + 1`` float32 C x H x W
  marginals: the initial softmax(-unary), then one after each iteration.

Register a new one (a GPU implementation, say) with ``BACKENDS["name"] = obj``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


from .params import CRFParams, CrfError


class PyDenseCRF2:
    """Krähenbühl's permutohedral-lattice code through pydensecrf2 (CPU)."""

    @staticmethod
    def _model(image: np.ndarray, unary: np.ndarray, params: CRFParams):
        import pydensecrf.densecrf as dcrf

        c, h, w = unary.shape
        norm = {"after": dcrf.NORMALIZE_AFTER, "symmetric": dcrf.NORMALIZE_SYMMETRIC}[params.normalization]
        crf = dcrf.DenseCRF2D(w, h, c)
        crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(c, h * w), dtype=np.float32))
        # Same order as the release's refine program: smoothness kernel, then appearance kernel.
        crf.addPairwiseGaussian(sxy=float(params.pos_xy_std), compat=float(params.pos_w),
                                kernel=dcrf.DIAG_KERNEL, normalization=norm)
        crf.addPairwiseBilateral(sxy=float(params.bi_xy_std), srgb=float(params.bi_rgb_std),
                                 rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                                 compat=float(params.bi_w), kernel=dcrf.DIAG_KERNEL, normalization=norm)
        return crf

    def marginals(self, image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
        """Marginals after ``params.iters`` mean-field iterations (C x H x W float32)."""
        crf = self._model(image, unary, params)
        return np.asarray(crf.inference(params.iters), dtype=np.float32).reshape(unary.shape)

    def steps(self, image: np.ndarray, unary: np.ndarray, params: CRFParams) -> Iterator[np.ndarray]:
        """Initial marginals, then the marginals after each mean-field iteration."""
        crf = self._model(image, unary, params)
        q, tmp1, tmp2 = crf.startInference()
        yield np.array(q, dtype=np.float32).reshape(unary.shape)
        for _ in range(params.iters):
            crf.stepInference(q, tmp1, tmp2)
            yield np.array(q, dtype=np.float32).reshape(unary.shape)


class _Lazy:
    """A backend whose module is imported on first use (the torch one: keeps torch off the CPU path)."""

    def __init__(self, module: str, cls: str):
        self._where, self._obj = (module, cls), None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._obj is None:
            import importlib

            module, cls = self._where
            self._obj = getattr(importlib.import_module(module), cls)()
        return getattr(self._obj, name)


BACKENDS: dict = {"pydensecrf2": PyDenseCRF2(), "torch": _Lazy("densecrf.torch_backend", "TorchDenseCRF")}
DEFAULT_BACKEND = "pydensecrf2"


def get_backend(name: str):
    """The backend registered as ``name``."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise CrfError(f"unknown CRF backend {name!r} (have: {', '.join(sorted(BACKENDS))})") from None
