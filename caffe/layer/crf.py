"""CRF layers: the DeepLab fork's DenseCRF and crfasrnn's MultiStageMeanfield.

Both run the fully connected CRF's mean-field inference of ``densecrf.torch_backend`` (the
permutohedral lattice of ``densecrf.lattice``, the model and update order of pydensecrf2):
one implementation, imported lazily so that ``import caffe`` stays light. Each kernel's
message is normalised per pixel, ``K(Q)_i / (K(1)_i + 1e-20)`` with the lattice's own
``K(1)``, as both sources do. Gradients never reach the features (image, data_dim): the
lattice is built from them as constants, as neither source back-propagates into them.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Layer, register

FLT_MIN = 1.1754943508222875e-38  # <cfloat>'s FLT_MIN, the fork's floor before log


def _backend():
    """densecrf's torch backend (imported on first use: it needs torch, as this package does)."""
    from densecrf import torch_backend
    return torch_backend


def _float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32 (autocast hands the CRF bfloat16 / float16 scores)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _no_autocast(device: torch.device):
    """Autocast off for the CRF: CUDA autocast returns softmax in float32 while the lattice's
    weights would follow the scores' bfloat16 (embedding_bag refuses the mix), and the class
    mixing of MultiStageMeanfield would run in bfloat16. Both CRF layers run in float32."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _check_4d(layer, shape, what):
    if len(shape) != 4:
        raise layer.error(f"{what} must be 4-D (N x C x H x W), got shape {shape}")


def _mismatch(a, b) -> bool:
    return a is not None and b is not None and a != b


def _positive(layer, values, name):
    for v in values:
        if not v > 0:
            raise layer.error(f"{name} must be > 0, got {v:g}")


@register("DenseCRF")
class DenseCRF(Layer):
    """The DeepLab fork's DENSE_CRF: mean-field inference of the fully connected CRF on the
    network's scores, inside each image's real size (deeplab-public,
    src/caffe/layers/densecrf_layer.cpp, "dc" below; util/densecrf_pairwise.cpp, "pw").

    Bottoms: scores N x C x H x W, data_dim N x 1 x 1 x 2 (ImageSegData's third top: each
    image's height, width), and optionally the image N x 3 x H x W as the data layer gives it
    (dc:44-56, 2 or 3 bottoms; the fork's Reshape reads bottom[2] even with 2 bottoms, dc:84,
    which we do not). Top: same shape as the scores (dc:107).

    - Unary energy = -scores, the raw bottom values, no softmax (dc:363-373); so the first
      marginals are softmax(scores) (dc:234-236) and each of ``max_iter`` iterations (default
      10, dc:270-275) sets Q = softmax(scores + sum_k w_k norm_k K_k(Q)) (dc:238-259, pw:48-53),
      Potts kernels with per-pixel normalisation (pw:23-36, default per_pixel_normalization),
      the positional kernels first, then the bilateral ones (dc:316-360). ``pos_w`` /
      ``pos_xy_std`` and ``bi_w`` / ``bi_xy_std`` / ``bi_rgb_std`` are repeated: one kernel per
      entry (dc:22-42). The bilateral kernels are left out without an image (dc:332).
    - Features: x / xy_std, y / xy_std (column, row; dc:322-326, 343-344) and the image's
      three channels in blob order (B, G, R) divided by ``bi_rgb_std``, the values as given:
      mean-subtracted, no mean added back, scale 1 assumed (dc:348-353).
    - Region: the whole H x W if the image is at least as large as the blob in both axes,
      else its real size (dc:143-155); the fork reads outside the blob when only one axis is
      smaller, here each axis is min(blob, real). Outside the region the top is 0 (dc:282).
    - Top: the marginals, or log(max(Q, FLT_MIN)) with ``output_probability: false``
      (dc:290-312).
    - Backward: the fork's is empty (dc:177-182). Here the scores get the gradient of the
      mean-field iterations (autograd through the lattice); data_dim and the image get none.

    Differences: the fork exponentiates with fast_exp, which flushes exp(x) to 0 below x = -20
    (include/caffe/util/densecrf_util.hpp:63-104); the fork's bilateral features read image 0
    of the batch for every image (dc:333, no offset for n); here each image's own.
    """

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    min_bottom_blobs = 2   # the fork's header: MinBottomBlobs 2, ExactNumTopBlobs 1

    def setup(self, bottom_shapes):
        if len(bottom_shapes) > 3:
            raise self.error(f"bottom size is at most three (got {len(bottom_shapes)}).")
        p = self.param.dense_crf_param
        self.max_iter = int(p.max_iter)
        self.output_prob = bool(p.output_probability)
        if len(p.pos_w) != len(p.pos_xy_std):
            raise self.error("pos_w and pos_xy_std should have the same size.")
        if len(p.bi_w) != len(p.bi_xy_std):
            raise self.error("bi_w and bi_xy_std should have the same size.")
        if len(p.bi_w) != len(p.bi_rgb_std):
            raise self.error("bi_w and bi_rgb_std should have the same size.")
        _positive(self, list(p.pos_xy_std) + list(p.bi_xy_std), "pos_xy_std and bi_xy_std")
        _positive(self, p.bi_rgb_std, "bi_rgb_std")
        self.pos = [(float(w), float(s)) for w, s in zip(p.pos_w, p.pos_xy_std)]
        self.bi = [(float(w), float(s), float(r)) for w, s, r in zip(p.bi_w, p.bi_xy_std, p.bi_rgb_std)]
        self.has_image = len(bottom_shapes) == 3
        scores = bottom_shapes[0]
        _check_4d(self, scores, "bottom 0 (scores)")
        dims = bottom_shapes[1]
        if _mismatch(scores[0], dims[0] if dims else None):
            raise self.error(f"The DCNN output and data should have the same number ({scores[0]} vs {dims[0]}).")
        rest = dims[1:]
        if None not in rest and math.prod(rest) < 2:   # (no tensor: shapes are built on the meta device too)
            raise self.error(f"bottom 1 (data_dim) must hold height and width per image, got shape {dims}")
        if self.has_image:
            if not self.bi:
                raise self.error("has image as input, but no bilateral parameters specified.")
            image = bottom_shapes[2]
            _check_4d(self, image, "bottom 2 (image)")
            if _mismatch(image[1], 3):
                raise self.error(f"Can Only support color images for now (bottom 2 has {image[1]} channels).")
            if _mismatch(dims[0], image[0]):
                raise self.error(f"The data and data dimension should have the same number ({image[0]} vs {dims[0]}).")
            for axis, name in ((2, "height"), (3, "width")):
                if _mismatch(scores[axis], image[axis]):
                    raise self.error(f"DCNN output after upsampling should have the same {name} as image "
                                     f"({scores[axis]} vs {image[axis]}).")
        self._positional_cache: dict = {}
        return [scores]

    def allow_force_backward(self, bottom: int) -> bool:
        """Only the scores: data_dim and the image are features, not variables."""
        return bottom == 0

    def regions(self, scores: torch.Tensor, data_dim: torch.Tensor) -> list[tuple[int, int]]:
        """Each image's (height, width) of inference: the blob's where the image is at least as
        large in both axes, else the image's (dc:143-155), taken per axis (min of the two)."""
        n, _, ph, pw = scores.shape
        dims = data_dim.detach().reshape(n, -1)[:, :2].cpu().tolist()
        # int(): the fork's float -> int conversion (dc:143-144)
        return [(max(0, min(ph, int(h))), max(0, min(pw, int(w)))) for h, w in dims]

    def forward(self, scores, data_dim, image=None):
        with _no_autocast(scores.device):
            return self._forward(_float32(scores), data_dim, image)

    def _forward(self, scores, data_dim, image=None):
        n, c, ph, pw = scores.shape
        if data_dim.shape[0] != n or data_dim.numel() < 2 * n:
            raise self.error(f"bottom 1 (data_dim) has shape {tuple(data_dim.shape)}; "
                             f"expected {n} x 1 x 1 x 2")
        if image is not None and (image.shape[0] != n or image.shape[1] != 3 or image.shape[2:] != scores.shape[2:]):
            raise self.error(f"bottom 2 (image) has shape {tuple(image.shape)}; expected {n} x 3 x {ph} x {pw}")
        sizes = self.regions(scores, data_dim)
        keep = [i for i, (h, w) in enumerate(sizes) if h * w > 0]
        if not keep:
            return (torch.zeros_like(scores),)
        tb = _backend()
        sizes_kept = [sizes[i] for i in keep]
        flat = torch.cat([scores[i, :, :h, :w].reshape(c, -1).t() for i, (h, w) in zip(keep, sizes_kept)])
        kernels, weights = [], []
        for w, std in self.pos:
            kernels.append(tb.positional_kernel(sizes_kept, std, "after", scores.device,
                                                cache=self._positional_cache))
            weights.append(w)
        if image is not None:
            ims = [image[i, :, :h, :w].detach().permute(1, 2, 0) for i, (h, w) in zip(keep, sizes_kept)]
            for w, xy, rgb in self.bi:
                kernels.append(tb.bilateral_kernel(ims, xy, rgb, "after"))
                weights.append(w)
        q = tb.last_step(tb.mean_field(-flat, kernels, weights, self.max_iter))
        if not self.output_prob:
            q = torch.log(q.clamp(min=FLT_MIN))
        tops, start = [torch.zeros_like(scores[0])] * n, 0
        for i, (h, w) in zip(keep, sizes_kept):
            region = q[start:start + h * w].t().reshape(c, h, w)
            tops[i] = F.pad(region, (0, pw - w, 0, ph - h))
            start += h * w
        return (torch.stack(tops),)


_MSMF_REQUIRED = ("theta_alpha", "theta_beta", "theta_gamma", "num_iterations")


@register("MultiStageMeanfield")
class MultiStageMeanfield(Layer):
    """crfasrnn's CRF-RNN layer (torrvision/caffe master d779ee3, the submodule of
    torrvision/crfasrnn: src/caffe/layers/multi_stage_meanfield.cpp "ms", meanfield_iteration.cpp
    "mi"; crfrnn branch for the ``*_weights_str`` initialisation).

    Bottoms: unaries U, the first iteration's softmax input Q0 (a Split copy of U in crfasrnn's
    prototxts), the image N x 3 x H x W as the data layer gives it (ms:162-169). Learnable
    blobs, each 1 x 1 x C x C (ms:58-90): spatial kernel weights Ws, bilateral kernel weights
    Wb (diagonal, from ``spatial_filter_weight`` / ``bilateral_filter_weight`` (defaults 1) or,
    crfrnn branch, ``*_weights_str`` with one value per class), compatibility mu = -I (Potts).

    ``num_iterations`` T (> 1, ms:36) iterations t = 1..T, each (mi:108-167):
    P = softmax(X_{t-1}) (X_0 = Q0), M = Ws Ks(P) + Wb Kb(P) (class-mixing matrices acting on
    each pixel's C-vector), X_t = U - mu M (Eltwise coefficients 1, -1, mi:79-84). The top is
    X_T, not normalised (ms:169). Ks: positional Gaussian, features (x, y) / theta_gamma
    (ms:250-256); Kb: bilateral, (x, y) / theta_alpha and the image's three channels in blob
    order / theta_beta, values as given (ms:235-247); each normalised per pixel by its own K(1)
    (ms:99-107, 186-191). Gradients (mi:170-281) reach U, Q0 and the three blobs through all
    iterations; none reach the image. With Ws = w_s I, Wb = w_b I, mu = -I and Q0 = U this is
    the DenseCRF update with scores U, returned before the last softmax.

    Differences: the release's layer read the diagonals from files spatial.par and
    bilateral.par in the working directory (ms:67-81; the released ones hold 3 and 5 per class,
    the values its prototxts give as spatial_filter_weight / bilateral_filter_weight); here those
    fields fill them. ``threshold``, ``forced_*`` and ``force_cpu`` are read by neither version
    and are ignored. Batches: every image gets its own bilateral lattice (ms:179-192).
    """

    num_axes_on_reshape = "input must have 4 axes, corresponding to (num, channels, height, width)"
    exact_num_bottom_blobs = 3

    def setup(self, bottom_shapes):
        p = self.param.multi_stage_meanfield_param
        if self.param.HasField("multi_stage_meanfield_param"):
            missing = [f for f in _MSMF_REQUIRED if not p.HasField(f)]
            if missing:
                raise self.error(f"multi_stage_meanfield_param lacks {', '.join(missing)} "
                                 "(required in crfasrnn's caffe.proto)")
        self.num_iterations = int(p.num_iterations)
        if self.num_iterations <= 1:
            raise self.error(f"Number of iterations must be greater than 1 (num_iterations: {self.num_iterations}).")
        self.theta_alpha, self.theta_beta = float(p.theta_alpha), float(p.theta_beta)
        self.theta_gamma = float(p.theta_gamma)
        _positive(self, (self.theta_alpha, self.theta_beta, self.theta_gamma),
                  "theta_alpha, theta_beta and theta_gamma")
        unary, q0, image = bottom_shapes
        _check_4d(self, unary, "bottom 0 (unaries)")
        _check_4d(self, q0, "bottom 1 (softmax input)")
        _check_4d(self, image, "bottom 2 (image)")
        if any(_mismatch(a, b) for a, b in zip(unary, q0)):
            raise self.error(f"bottom 1 has shape {q0}, bottom 0 has {unary}; they must match")
        if _mismatch(image[1], 3):
            raise self.error(f"bottom 2 (image) must have 3 channels, got {image[1]}")
        if any(_mismatch(a, b) for a, b in zip(unary[:1] + unary[2:], image[:1] + image[2:])):
            raise self.error(f"bottom 2 (image) has shape {image}; it must be N x 3 x H x W of bottom 0 {unary}")
        c = unary[1]
        if c is None:
            raise self.error("the number of classes (bottom 0's channels) must be known")
        self.add_weights(self._diagonal(p.spatial_filter_weights_str, p.spatial_filter_weight, c, "spatial"))
        self.add_weights(self._diagonal(p.bilateral_filter_weights_str, p.bilateral_filter_weight, c, "bilateral"))
        self.add_weights(-torch.eye(c))   # compatibility_mode POTTS: diagonal -1 (ms:83-90)
        self._positional_cache: dict = {}
        return [unary]

    def _diagonal(self, text: str, weight: float, c: int, what: str) -> torch.Tensor:
        """The initial C x C kernel weights: the first C values of ``text`` on the diagonal, or
        ``weight`` times the identity when ``text`` is empty."""
        if not text:
            return torch.eye(c) * float(weight)
        try:
            values = [float(v) for v in text.split()[:c]]
        except ValueError:
            values = []
        if len(values) < c:
            raise self.error(f"{what}_filter_weights_str {text!r}: couldn't read {c} values")
        return torch.diag(torch.tensor(values))

    def add_weights(self, matrix: torch.Tensor) -> None:
        """Append a learnable 1 x 1 x C x C blob (crfasrnn's shape)."""
        self.blobs.append(nn.Parameter(matrix.reshape(1, 1, *matrix.shape).to(torch.float32).contiguous()))

    def allow_force_backward(self, bottom: int) -> bool:
        """Not into the image (crfasrnn's Backward writes no diff there)."""
        return bottom != 2

    def forward(self, unary, q0, image):
        with _no_autocast(unary.device):
            return self._forward(_float32(unary), _float32(q0), image)

    def _forward(self, unary, q0, image):
        n, c, h, w = unary.shape
        if q0.shape != unary.shape or image.shape[0] != n or image.shape[1] != 3 or image.shape[2:] != unary.shape[2:]:
            raise self.error(f"bottoms have shapes {tuple(unary.shape)}, {tuple(q0.shape)}, {tuple(image.shape)}; "
                             f"expected N x C x H x W twice and N x 3 x H x W")
        tb = _backend()

        def flat(t):   # N x C x H x W -> (N H W) x C, pixels row-major, images one after another
            return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])

        spatial = tb.positional_kernel([(h, w)] * n, self.theta_gamma, "after", unary.device,
                                       cache=self._positional_cache)
        ims = [image[i].detach().permute(1, 2, 0) for i in range(n)]
        bilateral = tb.bilateral_kernel(ims, self.theta_alpha, self.theta_beta, "after")
        ws, wb, mu = (b.reshape(c, c).to(unary.dtype) for b in self.blobs)
        x = tb.last_step(tb.mean_field(-flat(unary), (spatial, bilateral), (ws, wb), self.num_iterations,
                                compat=mu, start=flat(q0), logits=True))
        return (x.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous(),)
