"""The forward without gradients (caffe/inference.py) computes what the recorded forward does.

Net.forward under no_grad runs a plan made once per set of requested blobs, keeps 4-D CPU
blobs channels_last through convolutions, poolings and element-wise layers, and overwrites a
bottom in place only where Caffe's in-place top allows it and no other live blob or caller
tensor shares the memory. Each case compares with the same net's forward with autograd on
(the plain layer-by-layer loop, no layout changes).
"""
import numpy as np
import torch

from caffe.net import Net

NET = """
name: "plan"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 21 dim: 17 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "drop1" type: "Dropout" bottom: "pool1" top: "drop1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "relu2" type: "ReLU" bottom: "drop1" top: "drop1" relu_param { negative_slope: 0.1 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "conv2" bottom: "drop1" top: "sum" }
layer { name: "pool2" type: "Pooling" bottom: "sum" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "prob" type: "Softmax" bottom: "pool2" top: "prob" }
layer { name: "up" type: "Interp" bottom: "pool2" top: "up" interp_param { zoom_factor: 2 } }
"""


def _net():
    torch.manual_seed(0)
    return Net(NET, "TEST")


def test_planned_forward_equals_the_recorded_forward():
    net = _net()
    x = torch.randn(2, 3, 21, 17) * 5
    want = net({"data": x.clone().requires_grad_()})
    with torch.no_grad():
        got = net({"data": x})
    assert set(got) == set(want) == {"prob", "up"}
    for k in want:
        assert got[k].is_contiguous(), k            # Caffe's layout comes back, whatever ran inside
        np.testing.assert_allclose(got[k].numpy(), want[k].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_layout_changes_nothing_but_round_off():
    net = _net()
    x = torch.randn(2, 3, 21, 17) * 5
    with torch.no_grad():
        fast = net({"data": x}, outputs="all")
        net.channels_last = False
        plain = net({"data": x}, outputs="all")
    assert set(fast) == set(plain)
    for k in plain:
        assert fast[k].is_contiguous(), k
        np.testing.assert_allclose(fast[k].numpy(), plain[k].numpy(), rtol=1e-5, atol=1e-5)


def test_in_place_never_reaches_a_shared_tensor():
    # Dropout in TEST hands back its bottom: relu2 computes drop1 in place, and must not
    # write into pool1, which conv2 still reads; the caller's input is never written.
    net = _net()
    x = torch.randn(2, 3, 21, 17) * 5
    kept = x.clone()
    with torch.no_grad():
        blobs = net({"data": x}, outputs=["pool1", "drop1", "conv1"])
    assert torch.equal(x, kept)
    assert (blobs["pool1"] < 0).sum() > 0                  # negatives that relu2 must not scale here
    np.testing.assert_allclose(blobs["drop1"].numpy(), torch.nn.functional.leaky_relu(blobs["pool1"], 0.1).numpy())
    assert torch.equal(blobs["pool1"], torch.nn.functional.max_pool2d(blobs["conv1"], 3, 2, 1, ceil_mode=True))


def test_only_the_requested_blobs_come_back_and_plans_are_reused():
    net = _net()
    x = torch.randn(2, 3, 21, 17)
    with torch.no_grad():
        a = net({"data": x}, outputs=["conv2"])
        b = net({"data": x}, outputs=["conv2"])
        c = net({"data": x})
    assert set(a) == {"conv2"} and set(c) == {"prob", "up"}
    assert torch.equal(a["conv2"], b["conv2"])
    assert len(net._infer_plans) == 2
