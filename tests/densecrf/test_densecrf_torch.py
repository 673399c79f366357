"""densecrf's torch backend: the permutohedral lattice, parity with pydensecrf2, batches, gradients."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import densecrf
from conftest import REPO
from deeplab.data.synthetic import render
from deeplab.extract.scoremaps import upsample_scores
from densecrf import CRFParams, unary_from_scores
from densecrf.backends import BACKENDS, PyDenseCRF2
from densecrf.lattice import LatticeSum, PermutohedralLattice, dense_gaussian_filter, lattice_filter
from densecrf.torch_backend import DenseCRF, TorchDenseCRF, build_kernels, mean_field


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (tests/conftest.py)


def net_like_scores(label: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Full-resolution scores like a stride-8 net's: the one-hot label downsampled, blurred, noisy, upsampled."""
    h, w = label.shape
    sh, sw = (h - 1) // 8 + 2, (w - 1) // 8 + 2
    small = cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST)
    raw = np.stack([(small == c) * 4.0 for c in range(classes)]).astype(np.float32)
    raw = cv2.GaussianBlur(raw.transpose(1, 2, 0), (0, 0), 1.0).reshape(sh, sw, classes).transpose(2, 0, 1)
    raw += np.random.default_rng(seed).normal(0, 0.8, raw.shape).astype(np.float32)
    return upsample_scores(raw, 8, h, w)


def synthetic_case(index: int, size: int = 48):
    """(RGB image, unary) of the synthetic set's image ``index``, 21 classes."""
    image, label = render(1, index, size)
    label = np.where(label == 255, 0, label).astype(np.uint8)
    return image, unary_from_scores(net_like_scores(label, 21, index))


def grid_features(h: int, w: int, std: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1) / std


# ---- the lattice ----------------------------------------------------------------------------

def test_lattice_weights_are_barycentric():
    f = torch.randn(500, 5) * 3
    lat = PermutohedralLattice(f)
    assert lat.offsets.shape == (500, 6) and lat.weights.shape == (500, 6)
    assert torch.all(lat.weights >= -1e-6)
    torch.testing.assert_close(lat.weights.sum(1), torch.ones(500), atol=1e-5, rtol=0)
    # the d+1 vertices of a point's simplex are distinct
    assert all(len(set(row)) == 6 for row in lat.offsets.tolist())


def test_lattice_single_point_and_far_points():
    # One point: splat, blur, slice returns alpha * sum_r w_r * (blurred mass at vertex r) > 0.
    lat = PermutohedralLattice(torch.tensor([[0.3, -0.2]]))
    out = lat.filter(torch.tensor([[2.0]]))
    assert out.item() > 0
    # Two points 100 standard deviations apart do not see each other.
    lat = PermutohedralLattice(torch.tensor([[0.0, 0.0], [100.0, 0.0]]))
    out = lat.filter(torch.tensor([[1.0], [0.0]]))
    assert out[1].item() == 0.0 and out[0].item() > 0


def test_lattice_groups_keep_images_apart():
    f = torch.tensor([[0.0, 0.0], [0.2, 0.1], [0.0, 0.0], [0.2, 0.1]])
    lat = PermutohedralLattice(f, torch.tensor([0, 0, 1, 1]))
    out = lat.filter(torch.tensor([[1.0], [0.0], [0.0], [0.0]]))
    assert out[2].item() == 0.0 and out[3].item() == 0.0 and out[1].item() > 0
    # ... and each group filters as it would alone
    alone = PermutohedralLattice(f[:2]).filter(torch.tensor([[1.0], [0.0]]))
    torch.testing.assert_close(out[:2], alone)


def test_lattice_transpose_is_reverse_filter():
    f = torch.randn(300, 3) * 2
    lat = PermutohedralLattice(f)
    x, y = torch.randn(300, 4, dtype=torch.float64), torch.randn(300, 4, dtype=torch.float64)
    lhs = (y * lat.filter(x)).sum()
    rhs = (lat.filter(y, reverse=True) * x).sum()
    torch.testing.assert_close(lhs, rhs)
    assert not torch.allclose(lat.filter(y), lat.filter(y, reverse=True))  # the blur order matters


def test_lattice_approximates_dense_gaussian():
    # Normalised filtering (what the CRF uses): the lattice against the brute-force dense filter.
    f = grid_features(20, 24, 3.0)
    x = torch.rand(f.shape[0], 3)
    lat = PermutohedralLattice(f)
    a = lat.filter(x) / lat.filter(torch.ones(f.shape[0], 1))
    b = dense_gaussian_filter(f.double(), x.double()) / dense_gaussian_filter(f.double(), torch.ones(f.shape[0], 1).double())
    err = ((a.double() - b).norm() / b.norm()).item()
    assert err < 0.02, err


def test_lattice_built_on_two_threads_equals_one_thread():
    # With several intra-op threads the build's independent numpy steps (axes, blur
    # operators) run on a thread pool: the same lattice, bit for bit.
    f = torch.randn(2000, 5) * 2
    one = PermutohedralLattice(f)
    torch.set_num_threads(2)
    try:
        two = PermutohedralLattice(f)
        steps_two = two._blur_steps(torch.float32, False)
    finally:
        torch.set_num_threads(1)
    for a, b in [(one.offsets, two.offsets), (one.weights, two.weights), (one._nbrs, two._nbrs),
                 *zip(one._splat, two._splat)]:
        assert torch.equal(a, b)
    for sa, sb in zip(one._blur_steps(torch.float32, False), steps_two, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(sa, sb))
    x = torch.rand(2000, 8)
    assert torch.equal(one.filter(x), two.filter(x))


def test_lattice_too_wide_keys_use_the_row_path(monkeypatch):
    # Keys too wide for one int64 take the row-by-row path: the same lattice as the packed one.
    import densecrf.lattice as lattice_module

    f = torch.randn(200, 5) * 4
    x = torch.randn(200, 3)
    packed = PermutohedralLattice(f, torch.arange(200) % 2)
    monkeypatch.setattr(lattice_module, "PACK_LIMIT", 1)
    rows = PermutohedralLattice(f, torch.arange(200) % 2)
    assert rows.num_vertices == packed.num_vertices
    torch.testing.assert_close(rows.filter(x), packed.filter(x))


def test_lattice_sum_is_the_scaled_sum_of_filters():
    # Two lattices of different dimension (2 and 3 blur steps) in one splat-blur-slice.
    g = torch.Generator().manual_seed(5)
    pos = PermutohedralLattice(grid_features(9, 11, 1.5))
    bi = PermutohedralLattice(torch.cat([grid_features(9, 11, 4.0), torch.rand(99, 3, generator=g) * 3], 1))
    scales = [torch.rand(99, 1, generator=g), torch.rand(99, 1, generator=g)]
    x = torch.rand(99, 8, generator=g)
    want = scales[0] * pos.filter(x) + scales[1] * bi.filter(x)
    torch.testing.assert_close(LatticeSum([pos, bi], scales, torch.float32).filter(x), want, atol=1e-5, rtol=1e-5)
    # the per-point scale folded into the slice equals scaling the output
    torch.testing.assert_close(bi.filter(x, scale=scales[1]), scales[1] * bi.filter(x), atol=1e-6, rtol=1e-6)


def test_inference_path_equals_autograd_path():
    # Scalar weights without autograd take the fused, label-padded path; tensor weights the
    # differentiable one: the same marginals (21 labels are padded to 24 on the first).
    kernels = build_kernels([torch.from_numpy(synthetic_case(12, 20)[0])], CRFParams())
    unary = torch.from_numpy(synthetic_case(12, 20)[1]).reshape(21, -1).t()
    with torch.no_grad():
        fast = list(mean_field(unary, kernels, (3.0, 4.0), 3))
        fast_logits = list(mean_field(unary, kernels, (3.0, 4.0), 3, logits=True))
    slow = list(mean_field(unary, kernels, (torch.tensor(3.0), torch.tensor(4.0)), 3))
    slow_logits = list(mean_field(unary, kernels, (torch.tensor(3.0), torch.tensor(4.0)), 3, logits=True))
    assert fast[0].shape == (400, 21) and len(fast) == len(slow) == 4
    for a, b in zip(fast + fast_logits, slow + slow_logits):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    assert fast_logits[1] is not fast_logits[2]  # yielded tensors are not overwritten later


# ---- parity with pydensecrf2 ------------------------------------------------------------------

@pytest.mark.parametrize("normalization", ["after", "symmetric"])
def test_parity_with_pydensecrf2(normalization):
    p = CRFParams(normalization=normalization)
    ref, ours = PyDenseCRF2(), TorchDenseCRF("cpu")
    for index in range(2):
        image, unary = synthetic_case(index, 40)
        a, b = ref.marginals(image, unary, p), ours.marginals(image, unary, p)
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.abs(a - b).max() < 1e-4
        assert (a.argmax(0) == b.argmax(0)).mean() >= 0.995


def test_parity_on_a_non_square_image_with_other_parameters():
    # (no OpenCV here: its thread pool in this process would hang later tests' forked workers)
    rng = np.random.default_rng(3)
    blocks = np.kron(rng.integers(0, 256, (6, 9, 3)), np.ones((5, 5, 1)))[:30, :41]
    image = np.clip(blocks + rng.normal(0, 6, blocks.shape), 0, 255).astype(np.uint8)
    label = (image[:, :, 0] > 128).astype(np.uint8) + 2 * (image[:, :, 1] > 128)
    unary = unary_from_scores(net_like_scores(label, 5, 3))
    p = CRFParams(iters=5, bi_w=5.0, bi_xy_std=20.0, bi_rgb_std=10.0, pos_w=2.0, pos_xy_std=1.5)
    a = PyDenseCRF2().marginals(image, unary, p)
    b = TorchDenseCRF("cpu").marginals(image, unary, p)
    assert np.abs(a - b).max() < 1e-4


def test_steps_match_pydensecrf2():
    image, unary = synthetic_case(4, 32)
    p = CRFParams(iters=4)
    a = list(PyDenseCRF2().steps(image, unary, p))
    b = list(TorchDenseCRF("cpu").steps(image, unary, p))
    assert len(b) == 5
    for x, y in zip(a, b):
        assert np.abs(x - y).max() < 1e-5
    e = np.exp(-unary - (-unary).max(0))
    np.testing.assert_allclose(b[0], e / e.sum(0), atol=1e-6)


def test_refine_and_cli_choice_reach_the_torch_backend():
    image, unary = synthetic_case(5, 32)
    scores = -unary
    labels = densecrf.refine(image, scores, backend="torch")
    assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
    assert (labels == densecrf.refine(image, scores)).mean() >= 0.995
    assert "torch" in BACKENDS
    from deeplab.commands.densecrf import build_parser
    args = build_parser().parse_args(["--images", "i", "--scores", "s", "--list", "l", "--out", "o", "--backend", "torch"])
    assert args.backend == "torch"


def test_cpu_path_does_not_import_torch():
    code = ("import sys, numpy as np, densecrf; "
            "densecrf.refine(np.zeros((4, 5, 3), np.uint8), np.zeros((2, 4, 5), np.float32)); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- batches, options ---------------------------------------------------------------------------

def test_batch_of_different_sizes_equals_one_by_one():
    cases = [synthetic_case(6, 32), synthetic_case(7, 16)]
    cases.append((np.ascontiguousarray(cases[0][0][:17, :29]), np.ascontiguousarray(cases[0][1][:, :17, :29])))
    p = CRFParams(iters=3)
    ours = TorchDenseCRF("cpu")
    batch = ours.marginals_batch([c[0] for c in cases], [c[1] for c in cases], p)
    for (image, unary), got in zip(cases, batch):
        assert got.shape == unary.shape
        np.testing.assert_allclose(got, ours.marginals(image, unary, p), atol=1e-6)


def test_positional_kernel_is_cached_per_size():
    cache: dict = {}
    a, _ = synthetic_case(11, 16)
    b = np.ascontiguousarray(a[:, ::-1])
    p = CRFParams(iters=1)
    pos1, bi1 = build_kernels([torch.from_numpy(a)], p, cache=cache)
    pos2, bi2 = build_kernels([torch.from_numpy(b)], p, cache=cache)
    assert pos2 is pos1 and bi2 is not bi1 and len(cache) == 1
    pos3, _ = build_kernels([torch.from_numpy(np.ascontiguousarray(a[:8]))], p, cache=cache)
    pos4, _ = build_kernels([torch.from_numpy(a)], p.replace(pos_xy_std=2.0), cache=cache)
    assert pos3 is not pos1 and pos4 is not pos1 and len(cache) == 3


def test_batch_rejects_mixed_class_counts():
    image, unary = synthetic_case(8, 24)
    with pytest.raises(ValueError, match="same number of classes"):
        TorchDenseCRF("cpu").marginals_batch([image, image], [unary, unary[:5]], CRFParams(iters=1))


def test_exact_positional_kernel_option():
    # The exact separable Gaussian equals the brute-force dense filter on the grid (truncation at 4 std).
    image = np.full((12, 15, 3), 100, np.uint8)
    p = CRFParams(pos_xy_std=2.0)
    pos, _ = build_kernels([torch.from_numpy(image)], p, positional="exact")
    f = grid_features(12, 15, 2.0)
    x = torch.rand(180, 2)
    dense = dense_gaussian_filter(f.double(), x.double())
    dense = dense / dense_gaussian_filter(f.double(), torch.ones(180, 1).double())
    torch.testing.assert_close(pos(x).double(), dense, atol=2e-4, rtol=0)
    # and the backend with it stays close to the lattice one on a real-looking case
    img, unary = synthetic_case(9, 40)
    a = TorchDenseCRF("cpu").marginals(img, unary, CRFParams())
    b = TorchDenseCRF("cpu", positional="exact").marginals(img, unary, CRFParams())
    assert (a.argmax(0) == b.argmax(0)).mean() > 0.97
    with pytest.raises(ValueError, match="positional"):
        TorchDenseCRF("cpu", positional="box")


# ---- gradients ----------------------------------------------------------------------------------------

def _small_kernels(normalization="after"):
    g = torch.Generator().manual_seed(0)
    ims = [torch.randint(0, 256, (3, 4, 3), dtype=torch.uint8, generator=g),
           torch.randint(0, 256, (2, 3, 3), dtype=torch.uint8, generator=g)]
    return build_kernels(ims, CRFParams(normalization=normalization, bi_rgb_std=60.0, bi_xy_std=3.0, pos_xy_std=1.0))


def _final(unary, kernels, weights, iters, compat=None):
    *_, q = mean_field(unary, kernels, weights, iters, compat)
    return q


@pytest.mark.parametrize("normalization", ["after", "symmetric"])
def test_gradcheck_unary_weights_and_compatibility(normalization):
    kernels = _small_kernels(normalization)
    g = torch.Generator().manual_seed(1)
    unary = torch.randn(18, 3, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.tensor([3.0, 4.0], dtype=torch.float64, requires_grad=True)
    mu = (-torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, dtype=torch.float64, generator=g)).requires_grad_()
    assert torch.autograd.gradcheck(lambda u, w, mu: _final(u, kernels, (w[0], w[1]), 3, mu), (unary, w, mu))


def test_lattice_filter_gradcheck():
    lat = PermutohedralLattice(torch.randn(40, 3))
    x = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: lattice_filter(lat, x), (x,))


def test_compatibility_minus_identity_is_potts():
    kernels = _small_kernels()
    unary = torch.randn(18, 4)
    a = _final(unary, kernels, (3.0, 4.0), 5)
    b = _final(unary, kernels, (3.0, 4.0), 5, -torch.eye(4))
    torch.testing.assert_close(a, b)
    # the textbook Potts matrix 1 - I differs by a per-pixel constant only
    c = _final(unary, kernels, (3.0, 4.0), 5, 1 - torch.eye(4))
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def test_module_learns_through_all_iterations():
    image, unary = synthetic_case(10, 24)
    crf = DenseCRF(CRFParams(iters=3), num_classes=21)
    q = crf([torch.from_numpy(image)], [torch.from_numpy(unary).requires_grad_()])[0]
    assert q.shape == unary.shape
    np.testing.assert_allclose(q.detach().numpy(), TorchDenseCRF("cpu").marginals(image, unary, CRFParams(iters=3)),
                               atol=1e-5)
    label = torch.from_numpy(unary.argmin(0)).long()
    torch.nn.functional.nll_loss(torch.log(q[None] + 1e-9), label[None]).backward()
    assert crf.pos_w.grad is not None and crf.bi_w.grad is not None and crf.compat.grad.abs().sum() > 0
