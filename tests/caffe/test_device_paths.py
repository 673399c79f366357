"""The engine on each device (the ``device`` fixture: the CPU, and CUDA where torch sees it): a
net's forward and backward, the max-pool mask and Upsample under autocast, the CRF layers under
autocast, pycaffe's GPU mode and the extraction's forward, each against the same computation on
the CPU in float32. On a machine without CUDA only the CPU cases run; tools/gpu_check.sh runs
the CUDA ones on a lent GPU (``pytest -m device``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe
from conftest import FIXTURES
from test_cuda_paths import crf_inputs, dense_crf_layer, layer, meanfield_layer
from caffe.net import Net
from deeplab.extract.scorenet import ScoreNet

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 19 dim: 19 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "pool1" top: "fc6"
  convolution_param { num_output: 3 kernel_size: 3 dilation: 2 pad: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "up" type: "Interp" bottom: "fc6" top: "up" interp_param { zoom_factor: 2 } }
"""
LOSS = """
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 dim: 19 dim: 19 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "up" bottom: "target" top: "loss" }
"""


def n_device(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 on CUDA: float32 there is compared with float32 here."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cudnn.allow_tf32 = conv
    torch.set_float32_matmul_precision(matmul)


def close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> bool:
    """float32 results of two devices agree to ``tol`` of the larger magnitude."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max()))


def test_net_forward_and_backward_match_the_cpu(device):
    torch.manual_seed(0)
    text = NET + LOSS   # (without a loss, as in Caffe, no gradient flows)
    ref = Net(text, "TRAIN")
    net = Net(text, "TRAIN")
    net.load_state_dict(ref.state_dict())
    net.to(device)
    x, target = torch.randn(2, 3, 19, 19), torch.randn(2, 3, 19, 19)
    outs = []
    for n in (ref, net):
        n.zero_grad()
        blobs = n({"data": x.to(n_device(n)), "target": target.to(n_device(n))}, outputs=["up", "loss"])
        blobs["loss"].backward()
        outs.append(blobs)
    assert outs[1]["up"].device == device and close(outs[1]["up"], outs[0]["up"])
    assert close(outs[1]["loss"], outs[0]["loss"])
    for (name, g_ref), (_, g) in zip(ref.named_parameters(), net.named_parameters()):
        assert g.grad is not None and close(g.grad, g_ref.grad, 1e-4), name


def test_max_pool_mask_and_upsample_under_autocast(device):
    h = w = 96   # indices up to 9215: above what bfloat16 holds exactly (256)
    pool = layer('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" '
                 'pooling_param { pool: MAX kernel_size: 2 stride: 2 }', (1, 1, h, w)).to(device)
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).neg()   # each window's max: its first cell
    with torch.autocast(device.type, dtype=torch.bfloat16):
        _, mask = pool(x.to(device, torch.bfloat16))
    _, ref = pool.cpu()(x)
    assert mask.device == device and mask.dtype == torch.float32
    assert torch.equal(mask.cpu(), ref) and ref.max() == (h - 2) * w + w - 2
    up = layer('name: "u" type: "Upsample" bottom: "y" bottom: "m" top: "z" upsample_param { scale: 2 }',
               tuple(mask.shape), tuple(mask.shape)).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        (z,) = up(torch.ones_like(mask, dtype=torch.bfloat16), mask)
    (z_ref,) = up.cpu()(torch.ones_like(ref), ref)
    # SegNet's Upsample puts each value back where its window's maximum was: the top-left cells
    assert torch.equal(z.float().cpu().nonzero(), z_ref.nonzero())
    assert z_ref[0, 0, ::2, ::2].eq(1).all() and z_ref.sum() == (h // 2) * (w // 2)


def test_dense_crf_and_meanfield_run_in_float32_under_autocast(device):
    crf = dense_crf_layer()
    scores, image = crf_inputs()
    dims = torch.tensor([[9.0, 11.0], [7.0, 8.0]]).reshape(2, 1, 1, 2)
    half = scores.to(torch.bfloat16)   # what a convolution under autocast hands on
    (ref,) = crf(half.float(), dims, image)
    crf.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        (out,) = crf(half.to(device), dims.to(device), image.to(device))
    assert out.device == device and out.dtype == torch.float32 and close(out, ref, 1e-4)

    m = meanfield_layer()
    scores, image = crf_inputs(seed=1)
    half = scores.to(torch.bfloat16)
    (ref,) = m(half.float(), half.float(), image)
    m.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        (out,) = m(half.to(device), half.to(device), image.to(device))
    assert out.device == device and out.dtype == torch.float32 and close(out, ref, 1e-4)


@pytest.fixture
def pycaffe_mode(device):
    """pycaffe in the mode of ``device`` (set_mode_gpu + set_device for CUDA); CPU mode after."""
    if device.type == "cuda":
        caffe.set_mode_gpu()
        caffe.set_device(device.index)
    else:
        caffe.set_mode_cpu()
    yield device
    caffe.set_mode_cpu()


def test_pycaffe_mode_round_trip(tmp_path, pycaffe_mode):
    model = tmp_path / "tiny.prototxt"
    model.write_text(NET)
    torch.manual_seed(1)
    Net(NET, "TEST").save(str(tmp_path / "w.caffemodel"))
    caffe.set_mode_cpu()
    ref = caffe.Net(str(model), str(tmp_path / "w.caffemodel"), caffe.TEST)
    if pycaffe_mode.type == "cuda":
        caffe.set_mode_gpu()
    net = caffe.Net(str(model), str(tmp_path / "w.caffemodel"), caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3, 19, 19)).astype(np.float32)
    for n in (ref, net):
        n.blobs["data"].data[...] = x
        n.params["fc6"][1].data[...] = 0.5        # a host-side weight edit the next forward must see
    want = ref.forward()["up"].copy()
    got = net.forward()["up"]
    assert isinstance(got, np.ndarray) and np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.array_equal(net.blobs["data"].data, x) and np.all(net.params["fc6"][1].data == 0.5)


def test_extraction_forward_matches_the_cpu(device):
    model = str(FIXTURES / "extract" / "tiny_test.prototxt")
    mapping = {"NET_ID": "tiny", "DATA_ROOT": "", "LIST": "", "EXP": "voc12", "FEATURE_DIR": "unused", "LIST_ID": ""}
    torch.manual_seed(2)
    ref = ScoreNet(model, mapping=mapping)
    canvas = np.random.default_rng(1).uniform(-100, 100, (2, 33, 41, 3)).astype(np.float32)
    want, _ = ref.forward(canvas)
    net = ScoreNet(model, mapping=mapping, device=device)
    net.net.load_state_dict(ref.net.state_dict())
    got, _ = net.forward(canvas)
    assert isinstance(got, np.ndarray) and got.shape == want.shape == (2, 3, 5, 6)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    fast = ScoreNet(model, mapping=mapping, device=device, amp="bf16")
    fast.net.load_state_dict(ref.net.state_dict())
    half, _ = fast.forward(canvas)
    assert half.dtype == np.float32 and np.abs(half - want).max() <= 0.05 * np.abs(want).max()
