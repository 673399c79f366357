"""caffe.compiled.compile_net: the compiled TEST forward equals the planned one.

One small net (convolution, ReLU, pooling, Eltwise, Deconvolution, Crop, Concat) is compiled
once with inductor (frozen weights): its outputs must equal the uncompiled forward's to float32
round-off, and a change of weights after compiling must reach the outputs. The wiring (when
the compiled path runs and when the planned forward runs instead, the variant limit, the
refusals, a failing compiler) uses torch.compile's ``eager`` backend or no compile at all, so
the file stays within a few tens of seconds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe import CaffeError
from caffe import compiled as cc
from caffe.compiled import compile_net
from caffe.net import Net

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 20 dim: 24 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 6 kernel_size: 3 pad: 2 dilation: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "conv2" top: "sum" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "up" type: "Deconvolution" bottom: "sum" top: "up"
        convolution_param { num_output: 4 kernel_size: 4 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "cat" type: "Concat" bottom: "crop" bottom: "data" top: "cat" }
layer { name: "score" type: "Convolution" bottom: "cat" top: "score"
        convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def image(h=20, w=24, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, (1, 3, h, w)).astype(np.float32))


def planned(net, x, outputs=None):
    """The uncompiled forward of ``net`` (its compile switched off for the call)."""
    held, net.compiled = net.compiled, None
    try:
        with torch.no_grad():
            return net({"data": x}, outputs=outputs)
    finally:
        net.compiled = held


def close(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape and got[k].is_contiguous()
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-5,
                                   atol=1e-5 * float(want[k].abs().max()), err_msg=k)


def test_inductor_equals_the_planned_forward_and_follows_new_weights():
    torch.manual_seed(0)
    net = compile_net(Net(NET))
    x = image()
    with torch.inference_mode():
        got = net({"data": x})
    close(got, planned(net, x))
    assert net.compiled.backend == "inductor" and len(net.compiled.variants) == 1
    with torch.inference_mode():
        close(net({"data": x}), planned(net, x))        # the variant, reused
    assert len(net.compiled.variants) == 1
    with torch.no_grad():
        net.layer("conv2").blobs[0].mul_(-2.0)         # frozen weights are copies: recompiled
    with torch.no_grad():
        got = net({"data": x})
    close(got, planned(net, x))


@pytest.fixture
def eager(monkeypatch):
    """compile_net with torch.compile's eager backend (no code generation)."""
    monkeypatch.setattr(cc, "BACKEND", "eager")


def test_when_the_compiled_path_runs(eager):
    torch.manual_seed(1)
    net = compile_net(Net(NET))
    x = image(seed=1)
    with torch.enable_grad():
        net({"data": x})
    assert net.compiled.variants == {}                 # autograd on: the ordinary forward
    with torch.no_grad():
        every = net({"data": x}, outputs="all")
        assert net.compiled.variants == {} and "pool1" in every
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net({"data": x})
        assert net.compiled.variants == {}
        close(net({"data": x}, outputs=["sum", "score"]), planned(net, x, ["sum", "score"]))
        close(net({"data": x}), planned(net, x))
        assert len(net.compiled.variants) == 2         # one per set of requested blobs
        close(net({"data": image(16, 28)}), planned(net, image(16, 28)))
        assert len(net.compiled.variants) == 3         # and per input shape


def test_past_the_variant_limit_the_planned_forward_runs(eager):
    net = Net(NET)
    net.compiled = cc.Compiled(net, "eager", max_variants=1)
    with torch.no_grad():
        net({"data": image()})
        with pytest.warns(UserWarning, match="further shapes run uncompiled"):
            out = net({"data": image(18, 18)})
    assert len(net.compiled.variants) == 1
    close(out, planned(net, image(18, 18)))


def test_refused_layers_and_phases_are_one_clear_error():
    lossy = NET.replace('top: "data" input_param', 'top: "data" top: "label" input_param') \
        .replace("dim: 24 } }", "dim: 24 } shape { dim: 1 dim: 1 dim: 20 dim: 24 } }") \
        + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }\n'
    with pytest.raises(CaffeError) as e:
        compile_net(Net(lossy))
    assert "cannot be compiled" in str(e.value) and "'loss' (SoftmaxWithLoss)" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(CaffeError, match="compiles the TEST forward"):
        compile_net(Net(NET, "TRAIN"))


def test_a_failing_compiler_is_one_line(monkeypatch):
    import torch._inductor.config as config
    monkeypatch.setattr(config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(config, "fx_graph_cache", False)
    net = compile_net(Net(NET.replace("num_output: 3 kernel_size: 1", "num_output: 2 kernel_size: 1")))
    with torch.no_grad(), pytest.raises(CaffeError) as e:
        net({"data": image()})
    msg = str(e.value)
    assert "torch.compile (inductor) failed" in msg and "C++ compiler" in msg and "\n" not in msg


def test_a_deconvolution_read_by_a_per_channel_scaling_compiles_unfrozen():
    """torch 2.13's freezing folds a per-channel multiplication into the transposed convolution
    before it along the wrong weight axis (wrong values on ENet): such nets compile unfrozen."""
    assert cc.Compiled(Net(NET)).freezing
    scaled = NET.replace('layer { name: "crop"', 'layer { name: "s" type: "Scale" bottom: "up" top: "up" '
                                                 'scale_param { bias_term: true } }\nlayer { name: "crop"')
    c = cc.Compiled(Net(scaled))
    assert not c.freezing and c.unfrozen_because == "Deconvolution 'up' -> Scale 's'"
    assert not cc.Compiled(Net(scaled), "eager").freezing
