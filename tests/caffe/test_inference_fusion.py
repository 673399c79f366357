"""The planned forward's fused convolutions (caffe/inference.py FusedConv) compute what the
layers compute one by one, and fold only what no caller sees.

A CPU float32 Convolution runs as one oneDNN convolution with pre-reordered weights; the
per-channel affine layers after it (BatchNorm with stored statistics, Scale, Bias, BN) are
folded into its weights, and an Eltwise SUM and a ReLU become post-ops — only where the value
before each is read by that layer alone and is not a kept blob's final value. Each case
compares with the same net's forward with autograd on (the plain layer-by-layer loop) to
float32 round-off, and checks which layers the plan folded.
"""
import numpy as np
import pytest
import torch

import caffe
from caffe import inference
from caffe.net import Net
from bench.peer_nets import randomize   # the role-aware randomizer (BatchNorm statistics, Scale near 1)

SHAPE = (2, 3, 13, 11)
HEAD = f"""name: "fold"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {SHAPE[0]} dim: {SHAPE[1]} dim: {SHAPE[2]} dim: {SHAPE[3]} }} }} }}
"""


def conv(name, bottom, top, out=6, k=3, bias=True):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{top}" convolution_param {{ '
            f'num_output: {out} kernel_size: {k} pad: {k // 2} bias_term: {str(bias).lower()} '
            f'weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "gaussian" std: 0.2 }} }} }}\n')


def layer(name, type_, bottom, top, extra=""):
    bottoms = "".join(f' bottom: "{b}"' for b in ([bottom] if isinstance(bottom, str) else bottom))
    return f'layer {{ name: "{name}" type: "{type_}"{bottoms} top: "{top}" {extra} }}\n'


BN_SCALE_RELU = HEAD + conv("conv1", "data", "conv1", bias=False) + \
    layer("bn1", "BatchNorm", "conv1", "conv1") + \
    layer("scale1", "Scale", "conv1", "conv1", "scale_param { bias_term: true }") + \
    layer("relu1", "ReLU", "conv1", "conv1") + \
    layer("pool", "Pooling", "conv1", "pool", "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")

# a residual block: the projection and the second convolution each with BatchNorm + Scale,
# their sum, a ReLU; the sum's other bottom comes from before the fused convolution
RESIDUAL = HEAD + conv("proj", "data", "proj", 8, 1, False) + \
    layer("proj_bn", "BatchNorm", "proj", "proj") + layer("proj_sc", "Scale", "proj", "proj", "scale_param { bias_term: true }") + \
    conv("a", "data", "a", 8, 3, False) + \
    layer("a_bn", "BatchNorm", "a", "a") + layer("a_sc", "Scale", "a", "a", "scale_param { bias_term: true }") + \
    layer("a_relu", "ReLU", "a", "a") + \
    conv("b", "a", "b", 8, 3, False) + \
    layer("b_bn", "BatchNorm", "b", "b") + layer("b_sc", "Scale", "b", "b", "scale_param { bias_term: true }") + \
    layer("sum", "Eltwise", ["proj", "b"], "sum") + \
    layer("relu", "ReLU", "sum", "sum")

# not in place: conv -> "c", BatchNorm (use_global_stats given) -> "bn", Scale -> "sc", leaky ReLU -> "out"
CHAIN = HEAD + conv("conv", "data", "c") + \
    layer("bn", "BatchNorm", "c", "bn", "batch_norm_param { use_global_stats: true eps: 0.001 }") + \
    layer("sc", "Scale", "bn", "sc", "scale_param { bias_term: true }") + \
    layer("relu", "ReLU", "sc", "out", "relu_param { negative_slope: 0.2 }")

# the convolution's top read by two layers: nothing may be folded into it
TWO_READERS = HEAD + conv("conv", "data", "c") + \
    layer("bn", "BatchNorm", "c", "bn") + \
    layer("pool", "Pooling", "c", "pool", "pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }") + \
    layer("sum", "Eltwise", ["bn", "pool"], "sum")

# the forks' BN (SegNet's INFERENCE mode; PSPNet's in TEST) and Bias
FORK_BN = HEAD + conv("c1", "data", "c1") + \
    layer("bn1", "BN", "c1", "c1", "bn_param { bn_mode: INFERENCE }") + layer("r1", "ReLU", "c1", "c1") + \
    conv("c2", "c1", "c2") + layer("bn2", "BN", "c2", "c2", "bn_param { eps: 0.0001 }") + \
    layer("bias2", "Bias", "c2", "c2")


# no affine layers: the convolutions' own weights, reordered or not by the output's size
CONV_SUM = HEAD + conv("c1", "data", "c1") + layer("r1", "ReLU", "c1", "c1") + \
    conv("c2", "c1", "c2", 6, 1) + layer("sum", "Eltwise", ["c1", "c2"], "sum") + \
    layer("r2", "ReLU", "sum", "sum", "relu_param { negative_slope: 0.3 }")


def build(text, seed=0):
    torch.manual_seed(seed)
    net = Net(text, "TEST")
    randomize(net, seed)
    return net


def inputs(seed=1):
    return {"data": torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * 3}


def recorded(net, x, outputs=None):
    """The plain layer-by-layer forward (autograd on: no plan, no fusion, no layout change)."""
    out = net({k: v.clone().requires_grad_() for k, v in x.items()}, outputs=outputs)
    return {k: v.detach() for k, v in out.items()}


def planned(net, x, outputs=None):
    with torch.inference_mode():
        return net(x, outputs=outputs)


def folded(net, outputs=None):
    """{convolution name: names of the layers folded with it} in the plan ``net`` made for ``outputs``."""
    keep_all = outputs == "all"
    keep = frozenset(net.output_names if outputs is None or keep_all else outputs) | frozenset(net.loss_weights)
    return {s.layer.name: [la.name for la in s.fused.layers[1:]] for s in net._infer_plans[(keep, keep_all)]
            if s.fused is not None}


def assert_close(got, want):
    assert set(got) == set(want)
    for k in want:
        assert got[k].is_contiguous(), k
        np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=2e-5, atol=2e-5 * float(want[k].abs().max()),
                                   err_msg=k)


needs_onednn = pytest.mark.skipif(not inference._HAS_ONEDNN, reason="torch without oneDNN: nothing is fused")


@needs_onednn
def test_conv_batchnorm_scale_relu_in_place_fold_into_one_step():
    net = build(BN_SCALE_RELU)
    x = inputs()
    for outputs in (None, ["conv1", "pool"], "all"):   # conv1's only visible value is after relu1
        assert_close(planned(net, x, outputs), recorded(net, x, outputs))
        assert folded(net, outputs) == {"conv1": ["bn1", "scale1", "relu1"]}
    assert len(net._fused_weights) == 1           # oneDNN ran it, with weights folded once for all plans


@needs_onednn
def test_residual_block_sum_and_relu_are_post_ops():
    net = build(RESIDUAL)
    x = inputs()
    assert_close(planned(net, x), recorded(net, x))
    assert folded(net) == {"proj": ["proj_bn", "proj_sc"], "a": ["a_bn", "a_sc", "a_relu"],
                           "b": ["b_bn", "b_sc", "sum", "relu"]}
    assert_close(planned(net, x, "all"), recorded(net, x, "all"))
    # with every blob kept, b's final value (after b_sc) is seen: the sum runs on it
    assert folded(net, "all") == {"proj": ["proj_bn", "proj_sc"], "a": ["a_bn", "a_sc", "a_relu"], "b": ["b_bn", "b_sc"]}


@needs_onednn
@pytest.mark.parametrize("pack_positions", [0, 10 ** 6])
def test_weights_used_as_they_are_or_reordered(monkeypatch, pack_positions):
    monkeypatch.setattr(inference, "PACK_POSITIONS", pack_positions)
    net = build(CONV_SUM)
    x = inputs()
    assert_close(planned(net, x), recorded(net, x))
    assert folded(net) == {"c1": ["r1"], "c2": ["sum"]}   # oneDNN's leaky ReLU cannot follow a sum
    packed = [entry[1].layout == torch._mkldnn for entry in net._fused_weights.values()]
    assert packed == [bool(pack_positions)] * 2


@needs_onednn
def test_a_kept_blob_stops_the_folding_there():
    net = build(CHAIN)
    x = inputs()
    assert_close(planned(net, x), recorded(net, x))
    assert folded(net) == {"conv": ["bn", "sc", "relu"]}      # use_global_stats: true, leaky ReLU
    assert_close(planned(net, x, ["bn", "out"]), recorded(net, x, ["bn", "out"]))
    assert folded(net, ["bn", "out"]) == {"conv": ["bn"]}      # BatchNorm's top is kept: Scale runs on it
    assert_close(planned(net, x, ["c", "out"]), recorded(net, x, ["c", "out"]))
    assert folded(net, ["c", "out"]) == {"conv": []}          # the convolution's own top is kept
    assert_close(planned(net, x, "all"), recorded(net, x, "all"))
    assert folded(net, "all") == {"conv": []}


@needs_onednn
def test_a_top_with_two_readers_is_not_folded():
    net = build(TWO_READERS)
    x = inputs()
    assert_close(planned(net, x), recorded(net, x))
    assert folded(net) == {"conv": []}


@needs_onednn
def test_batch_statistics_are_never_folded():
    text = CHAIN.replace("use_global_stats: true", "use_global_stats: false")
    net = build(text)
    x = inputs()
    assert_close(planned(net, x), recorded(net, x))
    assert folded(net) == {"conv": []}


@needs_onednn
def test_forks_bn_and_bias_fold():
    net = build(FORK_BN)
    with torch.no_grad():
        for p in net.layer("bn2").blobs[3:]:     # PSPNet's running variance: positive
            p.copy_(torch.rand(p.shape) + 0.5)
    x = inputs()
    assert_close(planned(net, x), recorded(net, x))
    assert folded(net) == {"c1": ["bn1", "r1"], "c2": ["bn2", "bias2"]}


@needs_onednn
def test_changed_parameters_are_folded_again(tmp_path):
    net = build(BN_SCALE_RELU)
    x = inputs()
    first = planned(net, x)["pool"]
    other = build(BN_SCALE_RELU, seed=5)
    other.save(tmp_path / "w.caffemodel")
    # copy_from (CopyTrainedLayersFrom)
    net.copy_from(str(tmp_path / "w.caffemodel"))
    got = planned(net, x)["pool"]
    assert not torch.allclose(got, first)
    assert_close({"pool": got}, recorded(net, x, ["pool"]))
    # a solver-like in-place update of the weights, and of the Scale, inside inference mode
    with torch.inference_mode():
        net.layer("conv1").blobs[0].sub_(0.05)
        net.layer("scale1").blobs[0].mul_(1.5)
    assert_close({"pool": planned(net, x)["pool"]}, recorded(net, x, ["pool"]))
    # BatchNorm's statistics written through torch
    with torch.no_grad():
        net.layer("bn1").blobs[1].mul_(4.0)
    assert_close({"pool": planned(net, x)["pool"]}, recorded(net, x, ["pool"]))
    # a parameter replaced (the solver's ShareTrainedLayersWith)
    net.layer("scale1").blobs[1] = torch.nn.Parameter(torch.randn(6))
    assert_close({"pool": planned(net, x)["pool"]}, recorded(net, x, ["pool"]))
    # a write torch does not see (a numpy view) needs inference.invalidate
    net.layer("conv1").blobs[0].detach().numpy()[...] *= -1
    inference.invalidate(net)
    assert_close({"pool": planned(net, x)["pool"]}, recorded(net, x, ["pool"]))


@needs_onednn
def test_other_dtypes_layouts_and_fp16_autocast_run_the_layers_one_by_one():
    net = build(RESIDUAL)
    x = inputs()
    want = recorded(net, x)
    net.channels_last = False                     # the plain layout: the layers themselves
    assert_close(planned(net, x), want)
    net.channels_last = True
    plain = build(RESIDUAL)
    plain.fuse = False                            # the same plan and layout, nothing fused
    with torch.autocast("cpu", dtype=torch.float16):   # autocast reaches the layers' own convolutions
        got = planned(net, x)
        amp = planned(plain, x)
    assert torch.equal(got["sum"], amp["sum"])
    assert not torch.equal(amp["sum"].float(), want["sum"])
    assert not net._fused_weights                 # oneDNN never ran


# DeepLab-LargeFOV's shape in small: dilated 3x3 convolutions with ReLUs, a pooling, fc6 with
# dilation 4, the 1x1 fc7 and fc8
LARGEFOV = HEAD + \
    layer("conv1", "Convolution", "data", "conv1", 'convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 }') + \
    layer("relu1", "ReLU", "conv1", "conv1") + \
    layer("pool1", "Pooling", "conv1", "pool1", "pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 }") + \
    layer("fc6", "Convolution", "pool1", "fc6", 'convolution_param { num_output: 12 kernel_size: 3 pad: 4 dilation: 4 }') + \
    layer("relu6", "ReLU", "fc6", "fc6") + \
    layer("fc7", "Convolution", "fc6", "fc7", 'convolution_param { num_output: 12 kernel_size: 1 }') + \
    layer("relu7", "ReLU", "fc7", "fc7") + \
    layer("fc8", "Convolution", "fc7", "fc8", 'convolution_param { num_output: 5 kernel_size: 1 }')

BF16_CASES = {"bn_scale_relu": (BN_SCALE_RELU, {"conv1": ["bn1", "scale1", "relu1"]}),
              "residual": (RESIDUAL, {"proj": ["proj_bn", "proj_sc"], "a": ["a_bn", "a_sc", "a_relu"],
                                      "b": ["b_bn", "b_sc", "sum", "relu"]}),
              "largefov": (LARGEFOV, {"conv1": ["relu1"], "fc6": ["relu6"], "fc7": ["relu7"], "fc8": []})}


def assert_bf16_close(got, want):
    """Equal within bf16 round-off: 2e-2 of each output's scale."""
    assert set(got) == set(want)
    for k in want:
        w = want[k].float()
        np.testing.assert_allclose(got[k].float().numpy(), w.numpy(), rtol=0, atol=2e-2 * float(w.abs().max()),
                                   err_msg=k)


def bf16_folds(net) -> list:
    """The dtypes of the cached folded weights."""
    return [entry[0][0] for entry in net._fused_weights.values()]


needs_bf16 = pytest.mark.skipif(not (inference._HAS_ONEDNN and inference.bf16_supported()),
                                reason="oneDNN without bf16 here: bf16 autocast runs the layers one by one")


@needs_bf16
@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_bf16_autocast_runs_the_fused_convolutions_in_bf16(case):
    text, folds = BF16_CASES[case]
    net = build(text)
    x = inputs()
    fp32 = planned(net, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = recorded(net, x)                   # autocast's convolutions, the layers one by one
        got = planned(net, x)
    assert folded(net) == folds
    assert set(bf16_folds(net)) == {torch.bfloat16}
    assert all(v.dtype == torch.bfloat16 for v in got.values())   # what autocast's convolution gives
    assert_bf16_close(got, want)
    assert not all(torch.equal(got[k].float(), fp32[k]) for k in fp32)
    assert_close(planned(net, x), fp32)           # float32 again: its own weights, the same values
    assert set(bf16_folds(net)) == {torch.float32}


@needs_bf16
def test_bf16_weights_changed_after_the_first_forward_are_folded_again():
    net = build(BN_SCALE_RELU)
    x = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = planned(net, x)["pool"]
        with torch.inference_mode():
            net.layer("conv1").blobs[0].mul_(-0.5)
            net.layer("scale1").blobs[1].add_(0.3)
        got = planned(net, x)
        want = recorded(net, x)
    assert not torch.equal(got["pool"], first)
    assert_bf16_close(got, want)
    assert bf16_folds(net) == [torch.bfloat16]


@needs_onednn
def test_bf16_refused_by_onednn_runs_the_layers_one_by_one(monkeypatch):
    monkeypatch.setattr(inference, "_BF16", [False])
    net = build(RESIDUAL)
    x = inputs()
    plain = build(RESIDUAL)
    plain.fuse = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = planned(net, x)
        want = planned(plain, x)
    assert torch.equal(got["sum"], want["sum"])
    assert not net._fused_weights


@needs_onednn
def test_a_bottom_the_layer_refuses_gives_the_layer_error():
    net = build(BN_SCALE_RELU)
    bad = {"data": torch.randn(2, 4, 13, 11)}      # 4 channels for a 3-channel convolution
    with pytest.raises(RuntimeError) as fused:
        planned(net, bad)
    with pytest.raises(RuntimeError) as plain:
        recorded(net, bad)
    assert str(fused.value).splitlines()[0] == str(plain.value).splitlines()[0]


def test_pycaffe_blobs_are_all_present_and_correct(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(RESIDUAL)
    engine = build(RESIDUAL)
    weights = str(tmp_path / "w.caffemodel")
    engine.save(weights)
    net = caffe.Net(str(path), weights, caffe.TEST)
    x = inputs()
    net.blobs["data"].data[...] = x["data"].numpy()
    net.forward()
    want = recorded(engine, x, "all")
    assert list(net.blobs) == engine.blob_names
    for name in engine.blob_names:
        np.testing.assert_allclose(net.blobs[name].data, want[name].numpy(), rtol=2e-5,
                                   atol=2e-5 * float(want[name].abs().max()), err_msg=name)
