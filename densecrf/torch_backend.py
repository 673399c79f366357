"""The fully connected CRF on PyTorch: the model of the ``pydensecrf2`` backend on a permutohedral
lattice, on CPU or CUDA, for a batch of images of different sizes, differentiable.

Model (Krähenbühl & Koltun 2011, as the release's ``densecrf`` program runs it): unary
``U = -log softmax(scores)``; a positional Gaussian kernel (features x/σγ, y/σγ, weight w2) and a
bilateral kernel (x/σα, y/σα, r/σβ, g/σβ, b/σβ on RGB, weight w1), each normalised
NORMALIZE_AFTER (message divided by ``sum_j k(f_i, f_j)``, the lattice's own estimate) or
symmetric; Potts compatibility; mean-field with parallel updates, each iteration

    Q <- softmax(-U + w2 * K_pos(Q) + w1 * K_bi(Q))          (positional first, then bilateral)

which is Krähenbühl's update with Potts ``-w Q`` messages. With a compatibility matrix ``mu``
(C x C) the message becomes ``-(w2 K_pos(Q) + w1 K_bi(Q)) mu^T``; ``mu = -I`` is the update above
and the textbook Potts ``1 - I`` differs from it by a per-pixel constant, which softmax ignores.

Each lattice is built once per batch (an image index keeps images apart) and reused by every
iteration; gradients reach the unaries, the kernel weights and ``mu`` through all iterations
(the filter's backward pass is its transpose, another lattice filter). Inference (no autograd,
scalar weights, Potts) takes a faster path with the same result: all kernels' messages in one
splat-blur-slice (``lattice.LatticeSum``), labels padded to a multiple of 8.
"""
from __future__ import annotations

import ctypes
import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .lattice import LatticeSum, PermutohedralLattice, lattice_filter
from .params import CRFParams

__all__ = ["CRFKernel", "DenseCRF", "TorchDenseCRF", "bilateral_kernel", "build_kernels", "keep_freed_memory",
           "mean_field", "positional_kernel"]

POSITIONAL = ("lattice", "exact")
POSITIONAL_CACHE = 4  # positional kernels kept per backend (one per image size and sigma)


def _grid(sizes: Sequence[tuple[int, int]], std: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / std, y / std) per pixel, row-major per image, images one after another; and their image index."""
    s = torch.tensor(float(std), dtype=torch.float32, device=device)  # float32 division as the C++
    feats, groups = [], []
    for k, (h, w) in enumerate(sizes):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=device),
                                torch.arange(w, dtype=torch.float32, device=device), indexing="ij")
        feats.append(torch.stack([xs.reshape(-1) / s, ys.reshape(-1) / s], 1))
        groups.append(torch.full((h * w,), k, dtype=torch.long, device=device))
    return torch.cat(feats), torch.cat(groups)


class _SeparableGaussian:
    """Exact ``exp(-(dx^2 + dy^2) / (2 std^2))`` on each image's pixel grid (truncated at 4 std), separable."""

    def __init__(self, sizes: Sequence[tuple[int, int]], std: float, device):
        r = max(1, int(np.ceil(4.0 * std)))
        t = torch.arange(-r, r + 1, dtype=torch.float64, device=device)
        self.taps, self.radius, self.sizes = torch.exp(-0.5 * (t / std) ** 2), r, list(sizes)

    def filter(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        out, start, c = [], 0, x.shape[1]
        taps = self.taps.to(x.dtype)
        for h, w in self.sizes:
            img = x[start:start + h * w].t().reshape(c, 1, h, w)
            img = F.conv2d(img, taps.view(1, 1, 1, -1), padding=(0, self.radius))
            img = F.conv2d(img, taps.view(1, 1, -1, 1), padding=(self.radius, 0))
            out.append(img.reshape(c, h * w).t())
            start += h * w
        return torch.cat(out)


class CRFKernel:
    """One normalised Gaussian kernel: ``K(q)_i = norm_i * sum_j k(f_i, f_j) q_j`` (N x C -> N x C)."""

    def __init__(self, filt, num_points: int, normalization: str, device):
        self.filt, self.normalization = filt, normalization
        total = filt.filter(torch.ones(num_points, 1, dtype=torch.float32, device=device))
        # Krähenbühl: norm = 1 / (K 1 + 1e-20), or its square root for the symmetric variant.
        norm = 1.0 / (total + 1e-20)
        self.norm = norm.sqrt() if normalization == "symmetric" else norm
        self._scales: dict = {}

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        norm = self.norm.to(q.dtype)
        if self.normalization == "symmetric":
            q = q * norm
        if isinstance(self.filt, PermutohedralLattice):
            out = lattice_filter(self.filt, q)
        else:
            out = self.filt.filter(q)
        return out * norm

    def message(self, q: torch.Tensor, weight: float) -> torch.Tensor:
        """``weight * self(q)`` without autograd; the normalisation and the weight are folded
        into the lattice's slice weights (one pass fewer over N x C)."""
        key = (float(weight), q.dtype)
        scale = self._scales.get(key)
        if scale is None:
            if len(self._scales) >= 4:  # a search tries many weights: keep the last few
                self._scales.pop(next(iter(self._scales)))
            scale = self._scales[key] = self.norm.to(q.dtype) * float(weight)
        if self.normalization == "symmetric":
            q = q * self.norm.to(q.dtype)
        return self.filt.filter(q, scale=scale) if isinstance(self.filt, PermutohedralLattice) else self.filt.filter(q) * scale


def build_kernels(images: Sequence[torch.Tensor], params: CRFParams, positional: str = "lattice",
                  cache: dict | None = None) -> tuple[CRFKernel, CRFKernel]:
    """The (positional, bilateral) kernels of a batch of H x W x 3 uint8 RGB images (one device).

    The positional kernel depends only on the image sizes and sigma_gamma: with a ``cache`` dict
    it is built once per such key (the last few kept) and reused for later batches.
    """
    if not images:
        raise ValueError("an empty batch of images")
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    pos = positional_kernel(sizes, params.pos_xy_std, params.normalization, images[0].device, positional, cache)
    return pos, bilateral_kernel(images, params.bi_xy_std, params.bi_rgb_std, params.normalization)


def positional_kernel(sizes: Sequence[tuple[int, int]], xy_std: float, normalization: str, device,
                      positional: str = "lattice", cache: dict | None = None) -> CRFKernel:
    """The positional kernel (features x/std, y/std) of a batch of images of ``sizes`` (H, W).

    With a ``cache`` dict it is built once per (sizes, std, normalization, kind, device), the
    last few kept.
    """
    if positional not in POSITIONAL:
        raise ValueError(f"positional must be one of {POSITIONAL}, got {positional!r}")
    key = (tuple(sizes), float(xy_std), normalization, positional, str(device))
    pos = None if cache is None else cache.get(key)
    if pos is None:
        if positional == "exact":
            pos_filter = _SeparableGaussian(sizes, xy_std, device)
        else:
            pos_feats, groups = _grid(sizes, xy_std, device)
            pos_filter = PermutohedralLattice(pos_feats, groups if len(sizes) > 1 else None)
        pos = CRFKernel(pos_filter, sum(h * w for h, w in sizes), normalization, device)
        if cache is not None:
            while len(cache) >= POSITIONAL_CACHE:
                cache.pop(next(iter(cache)))
            cache[key] = pos
    return pos


def bilateral_kernel(images: Sequence[torch.Tensor], xy_std: float, rgb_std: float,
                     normalization: str) -> CRFKernel:
    """The bilateral kernel (x/std, y/std, then the 3 channels / rgb_std in the order given) of
    a batch of H x W x 3 images (uint8 or float, one device)."""
    device = images[0].device
    sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    xy, groups = _grid(sizes, xy_std, device)
    rgb = torch.cat([im.reshape(-1, 3).to(torch.float32) for im in images])
    bi_feats = torch.cat([xy, rgb / torch.tensor(float(rgb_std), dtype=torch.float32, device=device)], 1)
    bi_filter = PermutohedralLattice(bi_feats, groups if len(sizes) > 1 else None)
    return CRFKernel(bi_filter, sum(h * w for h, w in sizes), normalization, device)


def mean_field(unary: torch.Tensor, kernels: Sequence[CRFKernel], weights: Sequence, iters: int,
               compat: torch.Tensor | None = None, start: torch.Tensor | None = None,
               logits: bool = False) -> Iterator[torch.Tensor]:
    """Marginals (N x C) of mean-field inference: softmax(-unary), then one after each iteration.

    ``unary`` is N x C (pixels x labels), ``weights`` one scalar or 0-d tensor per kernel, or a
    C x C matrix ``W`` (message ``K(Q) W^T``: class c receives sum_c' W[c, c'] K(Q)[c'], crfasrnn's
    kernel weights), ``compat`` None (Potts) or a C x C compatibility matrix ``mu``. ``start``
    replaces -unary as the logits of the first marginals; ``logits`` yields each step's logits
    (``start`` or -unary, then each iteration's energy) instead of their softmax.
    """
    plain = compat is None and all(isinstance(w, (int, float)) for w in weights)
    if plain and not (torch.is_grad_enabled() and (unary.requires_grad or (start is not None and start.requires_grad))):
        yield from _inference(unary, kernels, [float(w) for w in weights], iters, start, logits)
        return
    neg = -unary
    e = neg if start is None else start
    q = torch.softmax(e, dim=1)
    yield e if logits else q
    for _ in range(iters):
        energy = neg
        for w, kernel in zip(weights, kernels):
            if compat is None and isinstance(w, (int, float)):
                energy = torch.add(energy, kernel(q), alpha=w)  # one pass: energy + w * message
            else:
                message = kernel(q) @ w.t() if torch.is_tensor(w) and w.ndim == 2 else w * kernel(q)
                energy = energy + message if compat is None else energy - message @ compat.t()
        q = torch.softmax(energy, dim=1)
        yield energy if logits else q


def _inference(unary: torch.Tensor, kernels: Sequence[CRFKernel], weights: list[float], iters: int,
               start: torch.Tensor | None, logits: bool) -> Iterator[torch.Tensor]:
    """``mean_field`` without autograd, Potts, scalar weights: each message in one splat-blur-slice
    with its weight and normalisation folded into the slice. The labels are padded to a multiple
    of 8 with logits -inf (probability 0, messages 0): rows of 8-float vectors make the filter
    and the softmax faster than the bare label count (21 -> 24 saves about a fifth)."""
    c = unary.shape[1]
    pad = -c % 8

    def padded(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, pad), value=-math.inf) if pad else x

    neg = padded(-unary)
    e = neg if start is None else padded(start)
    q = torch.softmax(e, dim=1)
    yield e[:, :c] if logits else q[:, :c]
    fused = None
    if kernels and all(k.normalization == "after" and isinstance(k.filt, PermutohedralLattice) for k in kernels):
        # all messages in one splat-blur-slice, their weights and normalisations in the slice
        fused = LatticeSum([k.filt for k in kernels], [k.norm * w for k, w in zip(kernels, weights)], neg.dtype)
    energy = torch.empty_like(neg)  # reused (a fresh N x C tensor costs page faults); new when yielded
    for _ in range(iters):
        if logits:
            energy = torch.empty_like(neg)
        if fused is not None:
            torch.add(neg, fused.filter(q), out=energy)
        elif not kernels:
            energy.copy_(neg)
        else:
            for k, (w, kernel) in enumerate(zip(weights, kernels)):  # -U + pos + bi, the C++ order
                torch.add(neg if k == 0 else energy, kernel.message(q, w), out=energy)
        q = torch.softmax(energy, dim=1)
        yield energy[:, :c] if logits else q[:, :c]


def last_step(it: Iterator):
    """The last item of an iterator of mean-field steps (the marginals after the final one)."""
    q = None
    for q in it:
        pass
    return q


class DenseCRF(torch.nn.Module):
    """The CRF as a module: learnable kernel weights (w2, w1) and optionally a C x C compatibility.

    ``forward(images, unaries)`` takes lists of H x W x 3 uint8 RGB images and C x H x W unary
    energies (one size per image, the same C) and returns the list of C x H x W marginals.
    """

    def __init__(self, params: CRFParams | None = None, num_classes: int | None = None,
                 positional: str = "lattice"):
        super().__init__()
        self.params = params or CRFParams()
        self.positional = positional
        self.pos_w = torch.nn.Parameter(torch.tensor(float(self.params.pos_w)))
        self.bi_w = torch.nn.Parameter(torch.tensor(float(self.params.bi_w)))
        # mu = -I reproduces the Potts update exactly (see the module docstring).
        self.compat = None if num_classes is None else torch.nn.Parameter(-torch.eye(num_classes))

    def forward(self, images: Sequence[torch.Tensor], unaries: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Marginals after ``params.iters`` iterations, one C x H x W tensor per image."""
        kernels = build_kernels(images, self.params, self.positional)
        flat = torch.cat([u.reshape(u.shape[0], -1).t() for u in unaries])
        q = last_step(mean_field(flat, kernels, (self.pos_w, self.bi_w), self.params.iters, self.compat))
        return _split(q, unaries)


def _split(q: torch.Tensor, unaries: Sequence) -> list[torch.Tensor]:
    out, start = [], 0
    for u in unaries:
        c, h, w = u.shape
        out.append(q[start:start + h * w].t().reshape(c, h, w).contiguous())
        start += h * w
    return out


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (process-wide, once): allocations up
    to 32 MiB from the heap and the heap not trimmed below 256 MiB of free space.

    Every filtering step allocates its M x C or N x C result (PyTorch has no ``out=`` for the
    gather-sum used); with glibc's defaults these come from fresh pages each iteration and
    page faults cost a third of a 500x375 image's CPU time. Returns whether it was applied
    (False off glibc)."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _MALLOC_TUNED = bool(libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 256 << 20))  # MMAP_, TRIM_THRESHOLD
        except (OSError, AttributeError):
            _MALLOC_TUNED = False
    return _MALLOC_TUNED


_MALLOC_TUNED: bool | None = None


class TorchDenseCRF:
    """``densecrf`` backend on PyTorch (CPU or CUDA); the interface of ``backends.PyDenseCRF2``.

    ``device`` None picks CUDA when present; ``positional="exact"`` replaces the positional
    kernel's lattice by an exact separable Gaussian. On CPU, ``tune_malloc`` applies
    ``keep_freed_memory()`` (process-wide; about 1.3x faster per image with glibc).
    """

    def __init__(self, device: str | torch.device | None = None, positional: str = "lattice",
                 tune_malloc: bool = True):
        if positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {POSITIONAL}, got {positional!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if tune_malloc and self.device.type == "cpu":
            keep_freed_memory()
        self.positional = positional
        self._positional_cache: dict = {}

    @torch.no_grad()
    def _run(self, images: Sequence[np.ndarray], unaries: Sequence[np.ndarray], params: CRFParams):
        ims = [torch.from_numpy(np.ascontiguousarray(im, dtype=np.uint8)).to(self.device) for im in images]
        us = [torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32)).to(self.device) for u in unaries]
        if len({u.shape[0] for u in us}) > 1:
            raise ValueError("all unaries of a batch must have the same number of classes")
        kernels = build_kernels(ims, params, self.positional, self._positional_cache)
        flat = torch.cat([u.reshape(u.shape[0], -1).t() for u in us])
        for q in mean_field(flat, kernels, (float(params.pos_w), float(params.bi_w)), params.iters):
            yield q, us

    def marginals(self, image: np.ndarray, unary: np.ndarray, params: CRFParams) -> np.ndarray:
        """Marginals after ``params.iters`` mean-field iterations (C x H x W float32)."""
        return self.marginals_batch([image], [unary], params)[0]

    def marginals_batch(self, images: Sequence[np.ndarray], unaries: Sequence[np.ndarray],
                        params: CRFParams) -> list[np.ndarray]:
        """``marginals`` for a batch of images (sizes may differ), filtered together."""
        q, us = last_step(self._run(images, unaries, params))
        return [m.cpu().numpy() for m in _split(q, us)]

    def steps(self, image: np.ndarray, unary: np.ndarray, params: CRFParams) -> Iterator[np.ndarray]:
        """Initial marginals, then the marginals after each mean-field iteration."""
        for q, us in self._run([image], [unary], params):
            yield _split(q, us)[0].cpu().numpy()
