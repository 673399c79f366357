"""The CUDA paths' mechanisms, tested on the CPU (issue 25): what CUDA autocast would hand a
layer (convolutions in bfloat16, softmax in float32) is reproduced with the dtypes themselves,
device mismatches with the meta device as the other device."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe.layer import make_layer
from caffe.proto import caffe_pb2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def layer(text, *bottom_shapes, phase="TEST"):
    return make_layer(text_format.Parse(text, caffe_pb2.LayerParameter()), bottom_shapes, phase)


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


def test_dense_crf_runs_in_float32_under_cuda_like_autocast(cuda_softmax):
    crf = layer('name: "crf" type: "DenseCRF" bottom: "s" bottom: "d" bottom: "im" top: "p" dense_crf_param { '
                'max_iter: 5 pos_xy_std: 3 pos_w: 3 bi_xy_std: 5 bi_rgb_std: 10 bi_w: 4 }',
                (2, 3, 9, 11), (2, 1, 1, 2), (2, 3, 9, 11))
    scores, image = crf_inputs()
    dims = torch.tensor([[9.0, 11.0], [7.0, 8.0]]).reshape(2, 1, 1, 2)
    half = scores.to(torch.bfloat16)   # what a convolution under CUDA autocast returns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = crf(half, dims, image)
    (ref,) = crf(half.float(), dims, image)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)


def test_multi_stage_meanfield_mixes_classes_in_float32_under_autocast(cuda_softmax):
    m = layer('name: "inference1" type: "MultiStageMeanfield" bottom: "u" bottom: "q" bottom: "im" top: "p" '
              'multi_stage_meanfield_param { num_iterations: 3 theta_alpha: 5 theta_beta: 10 theta_gamma: 3 '
              'spatial_filter_weight: 3 bilateral_filter_weight: 5 compatibility_mode: POTTS threshold: 2 }',
              (2, 3, 9, 11), (2, 3, 9, 11), (2, 3, 9, 11))
    with torch.no_grad():
        m.blobs[0].add_(torch.arange(9.0).reshape(1, 1, 3, 3) / 7)   # a full class-mixing matrix
    scores, image = crf_inputs(seed=1)
    half = scores.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = m(half, half, image)
    (ref,) = m(half.float(), half.float(), image)
    assert out.dtype == torch.float32
    assert torch.equal(out, ref)
