"""The SegNet / ENet / PSPNet forks' layers (caffe/layer/normalization.py, resample.py, data.py; caffe/data/dense_image_data.py)
against hand-computed numbers, and a SegNet-style net that builds and trains."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe import CaffeError
from caffe.data import layer_source
from caffe.data.stream import NetFeed
from caffe.layer import make_layer
from caffe.net import Net
from caffe.prototxt import parse_net
from caffe.proto import caffe_pb2

FIXTURE = Path(__file__).parent.parent / "fixtures" / "segnet" / "segnet_tiny.prototxt"


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def const(v):
    return f'{{ type: "constant" value: {v} }}'


# x: 2 items, 2 channels, 1 x 2 pixels. Channel 0 holds 1, 3 | 5, 7: mean 4, E(x^2) 21, var 5.
# Channel 1 holds 0, 0 | 0, 4: mean 1, E(x^2) 4, var 3.
X = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[5.0, 7.0]], [[0.0, 4.0]]]])
SEGNET = f'name: "bn" type: "BN" bottom: "x" top: "y" bn_param {{ scale_filler {const(2)} shift_filler {const(1)} '


# ---------------------------------------------------------------- BN, SegNet's
def test_segnet_bn_learn_normalises_with_batch_statistics_in_any_phase():
    for phase in ("TRAIN", "TEST"):
        bn = layer(SEGNET + "} top: \"mean\" top: \"var\"", tuple(X.shape), phase=phase)
        assert [tuple(b.shape) for b in bn.blobs] == [(1, 2, 1, 1), (1, 2, 1, 1)]
        y, mean, var = bn(X)
        c0 = [2 * (v - 4) / math.sqrt(5 + 1e-9) + 1 for v in (1, 3, 5, 7)]
        c1 = [2 * (v - 1) / math.sqrt(3 + 1e-9) + 1 for v in (0, 0, 0, 4)]
        assert torch.allclose(y[:, 0].flatten(), torch.tensor(c0))
        assert torch.allclose(y[:, 1].flatten(), torch.tensor(c1))
        assert mean.flatten().tolist() == [4, 1] and var.flatten().tolist() == [5, 3]
        assert bn.top_shapes == [(2, 2, 1, 2), (1, 2, 1, 1), (1, 2, 1, 1)]


def test_segnet_bn_inference_is_scale_and_shift_only():
    bn = layer(SEGNET + "bn_mode: INFERENCE }", tuple(X.shape))
    bn.blobs[0].data[:] = torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1)
    (y,) = bn(X)
    assert y[:, 0].flatten().tolist() == [3, 7, 11, 15] and y[:, 1].flatten().tolist() == [1, 1, 1, -3]
    with pytest.raises(CaffeError, match=r"layer 'bn' \(BN\): takes 1 top blob with bn_mode INFERENCE"):
        layer(SEGNET + 'bn_mode: INFERENCE } top: "m"', tuple(X.shape))
    blank = layer('name: "b" type: "BN" bottom: "x" top: "y"', tuple(X.shape))   # no bn_param: SegNet's,
    assert not blank.pspnet and blank.blobs[0].abs().sum() == 0                  # fillers constant 0


def test_bn_learn_gradients_are_the_exact_ones():
    torch.manual_seed(0)
    bn = layer(SEGNET + "}", (3, 2, 2, 3)).double()
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)

    def run(x, scale, shift):
        return torch.func.functional_call(bn, {"blobs.0": scale, "blobs.1": shift}, (x,))[0]

    def reference(x, scale, shift):
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        return scale * (x - mean) / torch.sqrt(var + 1e-9) + shift

    g = torch.randn(3, 2, 2, 3, dtype=torch.float64)
    ours = torch.autograd.grad(run(x, scale, shift), (x, scale, shift), g)
    ref = torch.autograd.grad(reference(x, scale, shift), (x, scale, shift), g)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-8)
    assert torch.autograd.gradcheck(lambda x, s, b: run(x, s, b), (x, scale, shift))


# ---------------------------------------------------------------- BN, PSPNet's
PSP = f'name: "bn" type: "BN" bottom: "x" top: "y" bn_param {{ slope_filler {const(2)} bias_filler {const(1)} '


def test_pspnet_bn_train_uses_the_batch_and_updates_the_running_statistics():
    bn = layer(PSP + "momentum: 0.5 }", tuple(X.shape), phase="TRAIN")
    assert bn.pspnet and len(bn.blobs) == 4
    assert [p.lr_mult for p in bn.param.param] == [1, 1, 0, 0] and [p.decay_mult for p in bn.param.param][2:] == [0, 0]
    (y,) = bn(X)
    c0 = [2 * (v - 4) / math.sqrt(5 + 1e-5) + 1 for v in (1, 3, 5, 7)]
    assert torch.allclose(y[:, 0].flatten(), torch.tensor(c0))
    assert bn.blobs[2].flatten().tolist() == [2, 0.5] and bn.blobs[3].flatten().tolist() == [2.5, 1.5]
    bn(X)                                    # stat = 0.5 batch + 0.5 stat, no unbiasing
    assert bn.blobs[2].flatten().tolist() == [3, 0.75] and bn.blobs[3].flatten().tolist() == [3.75, 2.25]


def test_pspnet_bn_test_and_frozen_use_the_stored_statistics():
    bn = layer(PSP + "eps: 1 }", tuple(X.shape), phase="TEST")
    assert bn.blobs[3].flatten().tolist() == [0, 0]          # not frozen: the variance starts at 0
    bn.blobs[2].data[:] = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    bn.blobs[3].data[:] = torch.tensor([3.0, 0.0]).reshape(1, 2, 1, 1)
    (y,) = bn(X)
    assert y[:, 0].flatten().tolist() == [1, 3, 5, 7] and y[:, 1].flatten().tolist() == [1, 1, 1, 9]
    assert bn.blobs[2].flatten().tolist() == [1, 0]          # no update in TEST
    frozen = layer(PSP + "frozen: true eps: 0 }", tuple(X.shape), phase="TRAIN")
    assert frozen.blobs[3].flatten().tolist() == [1, 1]      # frozen: the variance starts at 1
    assert [(p.lr_mult, p.decay_mult) for p in frozen.param.param] == [(0, 0)] * 4
    x = X.clone().requires_grad_()
    (y,) = frozen(x)
    assert y.flatten().tolist() == (2 * X + 1).flatten().tolist() and frozen.blobs[2].abs().sum() == 0
    y.sum().backward()
    assert x.grad.flatten().tolist() == [2.0] * 8            # dx = dy slope / sqrt(var + eps)


def test_pspnet_bn_test_backward_is_the_forks_formula():
    """Not frozen, TEST: the fork's backward still applies the batch formula to the x_norm and
    inv_std of the stored statistics."""
    bn = layer(PSP + "eps: 0 }", tuple(X.shape), phase="TEST")
    bn.blobs[3].data[:] = 4.0                                 # inv_std 1/2, mean 0: x_norm = x / 2
    x = X.clone().requires_grad_()
    g = torch.zeros_like(X)
    g[0, 0, 0, 0] = 1.0
    bn(x)[0].backward(g)
    xn = X[:, 0].flatten() / 2
    sg = torch.tensor([2.0, 0, 0, 0])                          # slope * dy over channel 0's 4 values
    expected = 0.5 * (sg - sg.mean() - xn * (sg * xn).mean())
    assert torch.allclose(x.grad[:, 0].flatten(), expected)
    assert bn.blobs[0].grad.flatten().tolist() == [0.5, 0]    # sum(dy x_norm)


def test_bn_field_sets_and_top_counts_are_checked():
    with pytest.raises(CaffeError, match=r"bn_param mixes SegNet's BN fields \(bn_mode\) with PSPNet's \(frozen\)"):
        layer('name: "b" type: "BN" bottom: "x" top: "y" bn_param { bn_mode: LEARN frozen: true }', (1, 2, 1, 1))
    with pytest.raises(CaffeError, match=r"PSPNet's BN takes exactly 1 top blob, got 2"):
        layer(PSP + '} top: "m"', (1, 2, 1, 1))
    with pytest.raises(CaffeError, match=r"takes at most 3 top blob"):
        layer(SEGNET + '} top: "a" top: "b" top: "c"', (1, 2, 1, 1))


# ---------------------------------------------------------------- Upsample
def pool_with_mask(x, params="kernel_size: 2 stride: 2"):
    pool = layer(f'name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param {{ pool: MAX {params} }}',
                 tuple(x.shape))
    return pool(x)


def upsample(params, data_shape):
    return layer(f'name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y" upsample_param {{ {params} }}',
                 data_shape, data_shape)


def test_upsample_puts_each_value_back_where_the_pooling_mask_says():
    x = torch.tensor([[1.0, 9.0, 2.0, 0.0],
                      [3.0, 4.0, 0.0, 8.0],
                      [0.0, 0.0, 0.0, 0.0],      # a window of ties: the first index (Caffe's strict >)
                      [0.0, 0.0, 7.0, 5.0]]).reshape(1, 1, 4, 4)
    y, mask = pool_with_mask(x)
    assert mask.flatten().tolist() == [1, 7, 8, 14]          # h * W + w in the input plane
    up = upsample("scale: 2", (1, 1, 2, 2))
    assert up.top_shapes == [(1, 1, 4, 4)]
    (top,) = up(y, mask)
    assert top.reshape(4, 4).tolist() == [[0, 9, 0, 0], [0, 0, 0, 8], [0, 0, 0, 0], [0, 0, 7, 0]]


def test_upsample_odd_sizes_by_upsample_h_w_or_pad_out():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 5)
    y, mask = pool_with_mask(x)                               # ceil: 5 -> 3
    assert tuple(y.shape) == (2, 3, 3, 3)
    for params in ("upsample_h: 5 upsample_w: 5", "scale: 2 pad_out_h: true pad_out_w: true"):
        up = upsample(params, (2, 3, 3, 3))
        assert up.top_shapes == [(2, 3, 5, 5)]
        (top,) = up(y, mask)
        kept = top != 0
        assert torch.equal(top[kept], x[kept]) and int(kept.sum()) == 2 * 3 * 9
    assert upsample("scale_h: 3 scale_w: 2", (1, 1, 2, 2)).top_shapes == [(1, 1, 6, 4)]
    assert upsample("scale_h: 2 scale_w: 2 pad_out_w: true", (1, 1, 2, 2)).top_shapes == [(1, 1, 4, 3)]


def test_upsample_duplicate_indices_later_wins_and_backward_reads_every_index():
    up = upsample("scale: 2", (1, 1, 1, 2))
    x = torch.tensor([[[[1.0, 2.0]]]], requires_grad=True)
    mask = torch.tensor([[[[3.0, 3.0]]]])                     # overlapping windows chose one input twice
    (top,) = up(x, mask)
    assert top.shape == (1, 1, 2, 4) and top.flatten().tolist() == [0, 0, 0, 2, 0, 0, 0, 0]
    top.backward(10 * torch.arange(8.0).reshape(1, 1, 2, 4))
    assert x.grad.flatten().tolist() == [30, 30]


def test_upsample_gradcheck_and_errors():
    torch.manual_seed(2)
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64)
    y, mask = pool_with_mask(x)
    up = upsample("scale: 2", tuple(y.shape))
    yy = y.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: up(v, mask)[0], (yy,))
    with pytest.raises(CaffeError, match=r"upsample top index 16 out of range 0\.\.15"):
        upsample("scale: 2", (1, 1, 2, 2))(torch.ones(1, 1, 2, 2), torch.tensor([[[[0.0, 1.0], [2.0, 16.0]]]]))
    with pytest.raises(CaffeError, match=r"upsample top index -1 out of range"):
        upsample("scale: 2", (1, 1, 1, 1))(torch.ones(1, 1, 1, 1), -torch.ones(1, 1, 1, 1))
    for params, message in [("scale: 1", "greater than 1"), ("scale: 3 pad_out_h: true", "requires scale_h == 2"),
                            ("scale: 2 scale_h: 2 scale_w: 2", "scale OR scale_h & scale_w are required"),
                            ("upsample_h: 1 upsample_w: 4", "greater than 1")]:
        with pytest.raises(CaffeError, match=message):
            upsample(params, (1, 1, 2, 2))
    with pytest.raises(CaffeError, match=r"mask bottom's shape"):
        layer('name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y"', (1, 1, 2, 2), (1, 1, 2, 3))


# ---------------------------------------------------------------- DenseImageData
def dense_set(tmp_path, n=3, size=(4, 6)):
    """Images whose channel 0 is 10 * row + col + 100 * i, labels (row + col + i) % 3."""
    h, w = size
    rows, cols = np.mgrid[:h, :w]
    lines = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = 10 * rows + cols + 100 * i
        img[..., 1] = i
        cv2.imwrite(str(tmp_path / f"im{i}.png"), img)
        cv2.imwrite(str(tmp_path / f"lab{i}.png"), ((rows + cols + i) % 3).astype(np.uint8))
        lines.append(f"im{i}.png lab{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def dense_net(tmp_path, params, transform="", phase="TEST"):
    lst = dense_set(tmp_path)
    return Net(f'name: "n" layer {{ name: "d" type: "DenseImageData" top: "data" top: "label" '
               f'dense_image_data_param {{ source: "{lst}" root_folder: "{tmp_path}/" {params} }} {transform} }}', phase)


def batches(net, count, seed=0):
    feed = NetFeed(net, seed=seed)
    try:
        return [{k: v.numpy() for k, v in feed(b).items()} for b in range(count)]
    finally:
        feed.close()


def test_dense_image_data_reads_image_and_label_batches_in_order(tmp_path):
    net = dense_net(tmp_path, "batch_size: 2", 'transform_param { mean_value: 1 mean_value: 0 mean_value: 0 }')
    assert net.blob_shapes["data"] == (2, 3, 4, 6) and net.blob_shapes["label"] == (2, 1, 4, 6)
    b = batches(net, 2)
    assert b[0]["data"][1, 0, 2, 3] == 10 * 2 + 3 + 100 - 1 and b[0]["data"][1, 1, 0, 0] == 1
    assert b[0]["label"][1, 0, 2, 3] == (2 + 3 + 1) % 3 and b[0]["label"].dtype == np.float32
    assert b[1]["data"][:, 1, 0, 0].tolist() == [2, 0]        # item 3 wraps to the first line


def test_dense_image_data_resize_divide_crop_and_mirror_keep_image_and_label_together(tmp_path):
    net = dense_net(tmp_path, "batch_size: 1 new_height: 8 new_width: 12 label_divide_factor: 2")
    assert net.blob_shapes["data"] == (1, 3, 8, 12) and net.blob_shapes["label"] == (1, 1, 4, 6)
    b = batches(net, 1)[0]
    assert b["label"][0, 0].tolist() == ((np.add.outer(np.arange(4), np.arange(6))) % 3).tolist()  # nearest
    net = dense_net(tmp_path, "batch_size: 3 crop_height: 2 crop_width: 3 mirror: true", phase="TRAIN")
    assert net.blob_shapes["data"] == (3, 3, 2, 3) and net.blob_shapes["label"] == (3, 1, 2, 3)
    flips = set()
    for b in batches(net, 4, seed=5):
        for k in range(3):
            d, lab = b["data"][k], b["label"][k, 0]
            i = int(d[1, 0, 0])
            rows, cols = np.divmod(d[0] - 100 * i, 10)         # every pixel says where it came from
            assert (lab == (rows + cols + i) % 3).all()
            flips.add(bool(cols[0, 0] > cols[0, 1]))
    assert flips == {True, False}


def test_dense_image_data_errors(tmp_path):
    with pytest.raises(CaffeError, match=r"layer 'd' \(DenseImageData\): transform_param crop_size and mirror"):
        dense_net(tmp_path, "batch_size: 1", "transform_param { crop_size: 2 }")
    with pytest.raises(CaffeError, match=r"label_divide_factor 2 needs new_height and new_width"):
        dense_net(tmp_path, "batch_size: 1 label_divide_factor: 2")
    with pytest.raises(CaffeError, match=r"crop_height and crop_width must be set at the same time"):
        dense_net(tmp_path, "batch_size: 1 crop_height: 2")
    (tmp_path / "one.txt").write_text("im0.png\n")
    with pytest.raises(CaffeError, match=r"one.txt:1: expected 'image label_image'"):
        Net(f'name: "n" layer {{ name: "d" type: "DenseImageData" top: "a" top: "b" dense_image_data_param '
            f'{{ source: "{tmp_path}/one.txt" root_folder: "{tmp_path}/" batch_size: 1 }} }}')
    cv2.imwrite(str(tmp_path / "im1.png"), np.zeros((5, 6, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "lab1.png"), np.zeros((5, 6), np.uint8))
    lst = tmp_path / "list.txt"
    net = Net(f'name: "n" layer {{ name: "d" type: "DenseImageData" top: "a" top: "b" dense_image_data_param '
              f'{{ source: "{lst}" root_folder: "{tmp_path}/" batch_size: 2 }} }}')
    err = layer_source(net.layers[0], "TEST")[1]     # a source returns its item's error (for workers)
    assert isinstance(err, CaffeError) and "list.txt:2: image is 5x6, the first one 4x6" in str(err)


# ---------------------------------------------------------------- a SegNet-style net; V1 fork enums
def test_segnet_style_net_builds_and_trains_two_iterations(tmp_path):
    lst = dense_set(tmp_path, n=4, size=(7, 7))
    net_path = tmp_path / "net.prototxt"
    net_path.write_text(FIXTURE.read_text().replace("__LIST__", str(lst)).replace("__ROOT__", f"{tmp_path}/"))
    (tmp_path / "solver.prototxt").write_text(f'net: "{net_path}" base_lr: 0.01 momentum: 0.9 lr_policy: "fixed" '
                                              f'max_iter: 2 display: 0 snapshot_prefix: "{tmp_path}/s"')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    assert net.blobs["up1"].data.shape == (2, 4, 7, 7) and net.blobs["pool1_mask"].data.shape == (2, 4, 4, 4)
    scale0 = net.params["conv1_bn"][0].data.copy()
    solver.step(2)
    assert solver.iter == 2 and np.isfinite(float(net.blobs["loss"].data))
    assert not np.array_equal(net.params["conv1_bn"][0].data, scale0)   # BN's scale is learnt


def test_crfasrnn_v1_enum_values_parse(tmp_path):
    path = tmp_path / "v1.prototxt"
    path.write_text('name: "v1" layers { name: "c" type: CROP bottom: "a" bottom: "b" top: "c" } '
                    'layers { name: "m" type: MULTI_STAGE_MEANFIELD bottom: "u" bottom: "q" bottom: "d" top: "p" '
                    "multi_stage_meanfield_param { num_iterations: 2 theta_alpha: 1 theta_beta: 1 theta_gamma: 1 } }")
    net = parse_net(path)
    assert [(l.type, l.multi_stage_meanfield_param.num_iterations) for l in net.layer] == [("Crop", 1),
                                                                                            ("MultiStageMeanfield", 2)]
