"""The CUDA paths' mechanisms, tested on the CPU (issue 25): what CUDA autocast would hand a
layer (convolutions in bfloat16, softmax in float32) is reproduced with the dtypes themselves,
device mismatches with the meta device as the other device."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_layers_crf import layer

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (tests/conftest.py)


@pytest.fixture
def cuda_softmax(monkeypatch):
    """torch.softmax as CUDA autocast runs it: float32 out whatever the input's dtype."""
    real = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda x, dim, **kw: real(x.float(), dim=dim, **kw))


# ------------------------------------------------------------------ item 8: the max-pool mask
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pad", [0, 2])   # pad 2 > kernel / 2: the explicit-padding path
def test_max_pool_mask_keeps_exact_indices_under_half_precision(dtype, pad):
    h = w = 96   # indices up to 9215: above what bfloat16 (256) and float16 (2048) hold exactly
    pool = layer(f'name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" '
                 f'pooling_param {{ pool: MAX kernel_size: 3 stride: 2 pad: {pad} }}', (1, 1, h, w))
    # each window's maximum is its first cell (values fall along rows), exact in either dtype
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).neg().to(dtype)
    _, mask = pool(x)
    _, ref = pool(x.float())
    assert mask.dtype == torch.float32
    assert torch.equal(mask, ref) and mask.max() > 2048
    up = layer('name: "u" type: "Upsample" bottom: "y" bottom: "m" top: "z" upsample_param { scale: 2 }',
               tuple(mask.shape), tuple(mask.shape))
    # SegNet's Upsample scatters to the mask's places: the same ones in half precision
    y = torch.ones_like(mask)
    if pad == 0:
        assert torch.equal(up(y.to(dtype), mask)[0].float().nonzero(), up(y, ref)[0].nonzero())


# ------------------------------------------------------------------ item 9: the CRF layers under autocast
def crf_inputs(n=2, c=3, h=9, w=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, c, h, w, generator=g) * 3
    image = torch.randint(0, 256, (n, 3, h, w), generator=g).float()
    return scores, image


def dense_crf_layer():
    """A DenseCRF layer for crf_inputs' scores (2 x 3 x 9 x 11), image sizes and image."""
    return layer('name: "crf" type: "DenseCRF" bottom: "s" bottom: "d" bottom: "im" top: "p" dense_crf_param { '
                 'max_iter: 5 pos_xy_std: 3 pos_w: 3 bi_xy_std: 5 bi_rgb_std: 10 bi_w: 4 }',
                 (2, 3, 9, 11), (2, 1, 1, 2), (2, 3, 9, 11))


def meanfield_layer():
    """A MultiStageMeanfield layer for crf_inputs' shapes, with a full class-mixing matrix."""
    m = layer('name: "inference1" type: "MultiStageMeanfield" bottom: "u" bottom: "q" bottom: "im" top: "p" '
              'multi_stage_meanfield_param { num_iterations: 3 theta_alpha: 5 theta_beta: 10 theta_gamma: 3 '
              'spatial_filter_weight: 3 bilateral_filter_weight: 5 compatibility_mode: POTTS threshold: 2 }',
              (2, 3, 9, 11), (2, 3, 9, 11), (2, 3, 9, 11))
    with torch.no_grad():
        m.blobs[0].add_(torch.arange(9.0).reshape(1, 1, 3, 3) / 7)
    return m


def test_dense_crf_runs_in_float32_under_cuda_like_autocast(cuda_softmax):
    crf = dense_crf_layer()
    scores, image = crf_inputs()
    dims = torch.tensor([[9.0, 11.0], [7.0, 8.0]]).reshape(2, 1, 1, 2)
    half = scores.to(torch.bfloat16)   # what a convolution under CUDA autocast returns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = crf(half, dims, image)
    (ref,) = crf(half.float(), dims, image)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


def test_multi_stage_meanfield_mixes_classes_in_float32_under_autocast(cuda_softmax):
    m = meanfield_layer()
    scores, image = crf_inputs(seed=1)
    half = scores.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = m(half, half, image)
    (ref,) = m(half.float(), half.float(), image)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


# ------------------------------------------------------------------ items 10, 14, 15: the solver on CUDA
def test_smoothed_loss_stacks_host_and_device_losses_on_the_solvers_device():
    """pycaffe's losses come from the host, the final display's from the device (the meta
    device stands in for CUDA: torch.stack refuses to mix them as it refuses cpu + cuda)."""
    from caffe.solvers.solver import Solver
    solver = Solver.__new__(Solver)
    solver.device = torch.device("meta")
    solver._losses = [torch.tensor(1.0), torch.tensor(2.0, device="meta"), torch.tensor(3.0, dtype=torch.float64)]
    with pytest.raises(RuntimeError):
        torch.stack(solver._losses)
    window = solver._loss_window()
    assert window.device.type == "meta" and window.shape == (3,) and window.dtype == torch.float32
    solver.device = torch.device("cpu")
    solver._losses = [torch.tensor(1.0), torch.tensor(2.0, dtype=torch.float64)]
    assert solver.smoothed() == 1.5


def test_training_on_cuda_turns_on_cudnn_benchmark(monkeypatch):
    from caffe.solvers import parallel as distributed
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = distributed.setup(True, [1])
    assert d.device == "cuda:1" and chosen == [1] and torch.backends.cudnn.benchmark is True


def test_fp16_redo_takes_the_same_batches_without_asking_the_feed_again():
    """An overflow redoes the iteration; asking the feed for an index it already gave restarts a
    DataLoader (16 forked workers on the GPU machine), so the solver keeps the batches."""
    import pathlib
    from caffe.net import Net
    from caffe.prototxt import parse_solver
    from caffe.solvers.solver import Solver
    golden = pathlib.Path(__file__).parent.parent / "fixtures" / "golden" / "solver_poly"
    z = np.load(golden / "trajectory.npz")
    param = parse_solver(golden / "solver.prototxt")
    param.snapshot, param.iter_size = 0, 2
    net = Net(golden / "train.prototxt", phase="TRAIN")
    net.copy_from(golden / "init.caffemodel")
    asked = []

    def feed(b):
        asked.append(b)
        return {"data": torch.from_numpy(z["data_0"]), "label": torch.from_numpy(z["label_0"])}

    solver = Solver(param, net, feed, amp="fp16", progress=False, log=lambda *a, **k: None)
    solver.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)   # the first try overflows
    solver.step(2)
    assert solver.iter == 2 and solver.scaler.get_scale() < 2.0 ** 100
    assert asked == [0, 1, 2, 3]   # each index once, the redone iteration's included
