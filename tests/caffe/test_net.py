"""Net assembly: V1/V2 syntax, phases, in-place tops, weights in and out, placeholders, user errors."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, shared_path
from caffe import CaffeError
from caffe.model_io import load_caffemodel
from caffe.net import Net

V2_NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 19 dim: 19 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc6" type: "Convolution" bottom: "pool1" top: "fc6"
  param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
  convolution_param { num_output: 3 kernel_size: 3 dilation: 2 pad: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } include { phase: TRAIN } }
layer { name: "up" type: "Interp" bottom: "fc6" top: "up" interp_param { zoom_factor: 2 } }
"""

V1_NET = """
name: "tiny"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 19 input_dim: 19
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layers { name: "fc6" type: CONVOLUTION bottom: "pool1" top: "fc6" blobs_lr: 10 blobs_lr: 20 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 3 kernel_size: 3 hole: 2 pad: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layers { name: "drop6" type: DROPOUT bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } include: { phase: TRAIN } }
layers { name: "up" type: INTERP bottom: "fc6" top: "up" interp_param { zoom_factor: 2 } }
"""


def test_v1_and_v2_syntax_give_identical_nets_and_outputs(tmp_path):
    v2, v1 = Net(V2_NET, "TEST"), Net(V1_NET, "TEST")
    # Caffe's upgrade turns input/input_dim into an Input layer called "input"
    assert [l.type for l in v1.layers] == [l.type for l in v2.layers]
    assert [l.name for l in v1.layers][1:] == [l.name for l in v2.layers][1:]
    assert v1.blob_shapes == v2.blob_shapes
    assert [(p.layer, p.lr_mult, p.decay_mult) for p in v1.learnable_params()] == \
           [(p.layer, p.lr_mult, p.decay_mult) for p in v2.learnable_params()]
    v2.save(tmp_path / "w.caffemodel")
    v1.copy_from(str(tmp_path / "w.caffemodel"))
    x = torch.randn(1, 3, 19, 19)
    with torch.no_grad():
        a, b = v2({"data": x})["up"], v1({"data": x})["up"]
    assert a.shape == (1, 3, 19, 19)     # 19 -> pool 10 -> zoom 2: 10 + 9 = 19
    assert torch.equal(a, b)


def test_phase_rules_in_place_tops_and_outputs():
    train, test = Net(V2_NET, "TRAIN"), Net(V2_NET, "TEST")
    assert "drop6" in [l.name for l in train.layers] and "drop6" not in [l.name for l in test.layers]
    assert train.training and not test.training
    assert test.input_names == ["data"] and test.output_names == ["up"]


def test_caffemodel_round_trip(tmp_path):
    net = Net(V2_NET, "TEST")
    path = tmp_path / "net.caffemodel"
    net.save(path)
    layers = load_caffemodel(path)
    assert [l.name for l in layers] == ["conv1", "fc6"]
    assert layers[1].blobs[0].shape == (3, 4, 3, 3)
    np.testing.assert_array_equal(layers[0].blobs[0], net.layer("conv1").blobs[0].detach().numpy())
    other = Net(V2_NET, "TEST")
    assert other.copy_from(str(path))["copied"] == ["conv1", "fc6"]
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_v1_golden_caffemodel_matches_caffe_forward():
    """Caffe's own outputs for an old-syntax net and an old-format binary caffemodel."""
    folder = shared_path("golden", "caffe", "v1_upgrade")
    ref = np.load(folder / "forward.npz")
    net = Net(str(folder / "v1.prototxt"), "TEST")
    assert net.copy_from(str(folder / "v1_weights.caffemodel"))["copied"] == ["conv1", "fc"]
    with torch.no_grad():
        blobs = net({"data": torch.tensor(ref["data"])}, outputs="all")
    for name in ("conv1", "pool1", "fc", "prob"):
        np.testing.assert_allclose(blobs[name].numpy(), ref[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_copy_from_shape_mismatch_names_layer_and_shapes_or_skips(tmp_path):
    Net(V2_NET, "TEST").save(tmp_path / "w.caffemodel")
    wider = V2_NET.replace("num_output: 3", "num_output: 5")
    with pytest.raises(CaffeError, match=r"layer 'fc6': blob 0 has shape \(3, 4, 3, 3\) in the weights but \(5, 4, 3, 3\)"):
        Net(wider, "TEST").copy_from(str(tmp_path / "w.caffemodel"))
    report = Net(wider, "TEST").copy_from(str(tmp_path / "w.caffemodel"), ignore_shape_mismatch=True)
    assert report["skipped"] == ["fc6"] and report["copied"] == ["conv1"]
    lax = wider.replace('layer { name: "fc6" type: "Convolution"', 'layer { name: "fc6" type: "Convolution" strict_dim: false')
    assert Net(lax, "TEST").copy_from(str(tmp_path / "w.caffemodel"))["skipped"] == ["fc6"]


def test_msc_style_eltwise_sum_of_heads():
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
layer { name: "fc8" type: "Convolution" bottom: "data" top: "fc8" convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "constant" value: 1 } } }
layer { name: "h0" type: "Convolution" bottom: "data" top: "h0" convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "constant" value: 2 } } }
layer { name: "h1" type: "Convolution" bottom: "data" top: "h1" convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "constant" value: -1 } } }
layer { name: "sum" type: "Eltwise" bottom: "fc8" bottom: "h0" bottom: "h1" top: "fused" eltwise_param { operation: SUM } }
"""
    net = Net(text, "TEST")
    x = torch.randn(1, 2, 9, 9)
    with torch.no_grad():
        out = net({"data": x})["fused"]
    assert torch.allclose(out, (1 + 2 - 1) * x.sum(1, keepdim=True).expand(1, 3, 9, 9))


def test_placeholders_fill_and_unfilled_is_named():
    text = V2_NET.replace("num_output: 3 kernel_size: 3", "num_output: ${NUM_LABELS} kernel_size: 3")
    assert Net(text, "TEST", mapping={"NUM_LABELS": "7"}).blob_shapes["up"][1] == 7
    with pytest.raises(CaffeError, match=r"NUM_LABELS"):
        Net(text, "TEST")


def test_user_errors_are_one_clear_line():
    with pytest.raises(CaffeError, match=r"bottom 'nope' is not produced"):
        Net(V2_NET.replace('bottom: "pool1" top: "fc6"', 'bottom: "nope" top: "fc6"'), "TEST")
    with pytest.raises(CaffeError, match=r"<string>:9: layer 'fc6': unknown layer type 'Convolutoin'"):
        Net(V2_NET.replace('"fc6" type: "Convolution"', '"fc6" type: "Convolutoin"'), "TEST")
    with pytest.raises(CaffeError, match=r":4:"):      # malformed text: line number of the error
        Net(V2_NET.replace('top: "conv1"\n', 'top: "conv1" }}\n', 1), "TEST")
    with pytest.raises(CaffeError, match=r"not inputs of net"):
        Net(V2_NET, "TEST")({"dta": torch.zeros(1)})


def test_netinfo_style_tool_error_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text(V2_NET.replace('type: "ReLU"', 'type: "ReLu"'))
    code = ("import sys; from deeplab.cli import run_main; from caffe.net import Net; "
            f"run_main(lambda argv: Net({str(bad)!r}, 'TEST'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown layer type 'ReLu'" in r.stderr
    assert f"{bad}:7: layer 'relu1'" in r.stderr          # file and line of the layer
    assert "Traceback" not in r.stderr
