"""BVLC's layer catalogue (forward and Caffe's backward) against hand-computed numbers."""

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.proto import caffe_pb2


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def run(lay, *xs):
    """Forward, checking that the produced top shapes are the declared ones."""
    tops = lay(*xs)
    assert [tuple(t.shape) for t in tops] == [tuple(s) for s in lay.top_shapes]
    return tops


def grad_of(lay, *xs, index=0):
    """d(sum of top[index] * fixed weights)/d(bottom 0), weights 1..n (so that sums do not hide errors)."""
    x = xs[0].clone().requires_grad_(True)
    top = lay(x, *xs[1:])[index]
    w = torch.arange(1.0, top.numel() + 1, dtype=top.dtype).reshape(top.shape)
    (top * w).sum().backward()
    return x.grad, w


def check_gradcheck(lay, *xs):
    lay.double()
    inputs = [x.double().requires_grad_(i == 0) for i, x in enumerate(xs)]
    assert torch.autograd.gradcheck(lambda x: lay(x, *inputs[1:])[0], (inputs[0],), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- DummyData / Parameter
def test_dummy_data_shapes_fillers_and_refill():
    lay = layer('name: "d" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
                'shape { dim: 2 dim: 3 } shape { dim: 4 } shape { dim: 1 dim: 2 dim: 2 } '
                'data_filler { type: "constant" value: 7 } data_filler { type: "uniform" min: 2 max: 3 } '
                'data_filler { type: "gaussian" std: 1 } }')
    a, b, c = run(lay)
    assert torch.equal(a, torch.full((2, 3), 7.0))
    assert bool(((b >= 2) & (b <= 3)).all())
    a2, b2, c2 = lay()
    assert torch.equal(a2, a) and not torch.equal(b2, b) and not torch.equal(c2, c)   # refilled
    a2.add_(1)                                    # a consumer writing in place does not leak
    assert torch.equal(lay()[0], a)


def test_dummy_data_legacy_dims_and_default_zero_filler():
    lay = layer('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                'num: 2 channels: 3 channels: 1 height: 4 width: 5 }')
    assert lay.top_shapes == [(2, 3, 4, 5), (2, 1, 4, 5)]
    a, b = run(lay)
    assert not a.any() and not b.any()


@pytest.mark.parametrize("text", [
    'shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1',           # both
    'shape { dim: 1 } shape { dim: 1 } shape { dim: 1 }',                # 3 shapes, 2 tops
    'shape { dim: 1 } data_filler { } data_filler { } data_filler { }',  # 3 fillers, 2 tops
    'num: 1 num: 2 num: 3 channels: 1 height: 1 width: 1',
])
def test_dummy_data_refuses_bad_counts(text):
    with pytest.raises(CaffeError):
        layer(f'name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {text} }}')


def test_parameter_layer_top_is_its_blob():
    lay = layer('name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } }')
    assert lay.top_shapes == [(2, 3)] and tuple(lay.blobs[0].shape) == (2, 3)
    (w,) = run(lay)
    assert not w.any()
    (w * torch.arange(6.0).reshape(2, 3)).sum().backward()
    assert torch.equal(lay.blobs[0].grad, torch.arange(6.0).reshape(2, 3))


# ---------------------------------------------------------------- InnerProduct / Embed
def test_inner_product_axis_bias_and_transpose():
    lay = layer('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 '
                'weight_filler { type: "constant" value: 1 } bias_filler { type: "constant" value: 0.5 } }',
                (2, 3, 2))
    assert lay.top_shapes == [(2, 2)] and tuple(lay.blobs[0].shape) == (2, 6)
    with torch.no_grad():
        lay.blobs[0].copy_(torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 2]]))
    x = torch.arange(12.0).reshape(2, 3, 2)
    (y,) = run(lay, x)
    assert torch.equal(y, torch.tensor([[0.5, 10.5], [6.5, 22.5]]))   # x[.,0]+.5, 2 x[.,5]+.5
    t = layer('name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 '
              'axis: 2 transpose: true bias_term: false weight_filler { type: "gaussian" } }', (2, 3, 5))
    assert t.top_shapes == [(2, 3, 4)] and tuple(t.blobs[0].shape) == (5, 4) and len(t.blobs) == 1
    x = torch.randn(2, 3, 5)
    assert torch.allclose(run(t, x)[0], x @ t.blobs[0], atol=1e-6)
    check_gradcheck(t, x)


def test_embed_looks_up_rows():
    lay = layer('name: "e" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 2 input_dim: 3 '
                'bias_filler { type: "constant" value: 1 } }', (2, 2))
    with torch.no_grad():
        lay.blobs[0].copy_(torch.tensor([[0.0, 1], [2, 3], [4, 5]]))
    (y,) = run(lay, torch.tensor([[2.0, 0], [1, 1]]))
    assert torch.equal(y, torch.tensor([[[5.0, 6], [1, 2]], [[3, 4], [3, 4]]]))
    y.sum().backward()
    assert torch.equal(lay.blobs[0].grad, torch.tensor([[1.0, 1], [2, 2], [1, 1]]))   # times each row was used
    with pytest.raises(CaffeError):
        lay(torch.tensor([[3.0, 0], [0, 0]]))


# ---------------------------------------------------------------- Accuracy / ArgMax
def test_accuracy_top_k_ties_ignore_and_per_class():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.9, 0.0, 0.1], [0.2, 0.2, 0.6]])
    label = torch.tensor([2.0, 1, 0, 1])
    top1 = layer('name: "a" type: "Accuracy" bottom: "s" bottom: "l" top: "a" top: "c"', (4, 3), (4,))
    acc, per = run(top1, scores, label)
    # row0: 0.5 >= 0.4 -> wrong; row1: 0.4 beats true 0.3 -> wrong; row2 right; row3 wrong
    assert acc.item() == pytest.approx(0.25)
    assert torch.allclose(per, torch.tensor([1.0, 0.0, 0.0]))
    top2 = layer('name: "a" type: "Accuracy" bottom: "s" bottom: "l" top: "a" '
                 'accuracy_param { top_k: 2 ignore_label: 0 }', (4, 3), (4,))
    # row1 (label 1, 0.3): scores >= 0.3 besides itself: 0.3 (class 0), 0.4 -> 2, not < 2 -> wrong
    # row3 (label 1, 0.2): class 0's 0.2 ties and 0.6 beats -> 2 -> wrong; row0 right; row2 ignored
    assert run(top2, scores, label)[0].item() == pytest.approx(1 / 3)


def test_accuracy_spatial_axis():
    lay = layer('name: "a" type: "Accuracy" bottom: "s" bottom: "l" top: "a"', (1, 2, 1, 3), (1, 1, 1, 3))
    scores = torch.tensor([[[[1.0, 0.0, 5.0]], [[0.0, 1.0, 4.0]]]])
    assert run(lay, scores, torch.tensor([[[[0.0, 1.0, 1.0]]]]))[0].item() == pytest.approx(2 / 3)


def test_accuracy_label_outside_classes_counts_as_wrong_and_warns_once(capsys):
    """SegNet's CamVid nets give Accuracy the void label 11 of 11 classes without ignore_label;
    Caffe's release build counts such a position in the denominator and never as correct."""
    lay = layer('name: "acc" type: "Accuracy" bottom: "s" bottom: "l" top: "a" top: "c"', (4, 3), (4,))
    scores = torch.tensor([[0.9, 0.0, 0.1], [0.0, 0.8, 0.2], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    acc, per = run(lay, scores, torch.tensor([0.0, 1, 11, 2]))
    assert acc.item() == pytest.approx(3 / 4)        # rows 0, 1, 3 right; row 2 (label 11) counted, wrong
    assert torch.allclose(per, torch.tensor([1.0, 1.0, 1.0]))
    run(lay, scores, torch.tensor([0.0, 1, 11, -1]))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'acc'" in err[0] and "[11]" in err[0]


def test_argmax_ties_to_larger_index_and_out_max_val():
    x = torch.tensor([[[[1.0]], [[3.0]], [[3.0]], [[0.0]]]])        # 1 x 4 x 1 x 1
    lay = layer('name: "m" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 out_max_val: true }',
                (1, 4, 1, 1))
    assert lay.top_shapes == [(1, 2, 2, 1)]
    (y,) = run(lay, x)
    assert torch.equal(y.reshape(-1), torch.tensor([2.0, 1.0, 3.0, 3.0]))   # indices, then values
    ax = layer('name: "m" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 1 }', (2, 3, 2))
    x = torch.tensor([[[0.0, 5], [2, 1], [1, 1]], [[4, 4], [4, 0], [0, 4]]])
    (y,) = run(ax, x)
    assert torch.equal(y, torch.tensor([[[1.0, 0]], [[1, 2]]]))
    assert layer('name: "m" type: "ArgMax" bottom: "x" top: "y"', (5, 7)).top_shapes == [(5, 1, 1)]


# ---------------------------------------------------------------- shape layers
def test_split_shares_and_sums_gradients():
    lay = layer('name: "s" type: "Split" bottom: "x" top: "a" top: "b"', (2, 2))
    x = torch.ones(2, 2, requires_grad=True)
    a, b = run(lay, x)
    (a * 2 + b * 3).sum().backward()
    assert torch.equal(x.grad, torch.full((2, 2), 5.0))


def test_flatten_axes():
    lay = layer('name: "f" type: "Flatten" bottom: "x" top: "y"', (2, 3, 4, 5))
    assert lay.top_shapes == [(2, 60)]
    lay = layer('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }', (2, 3, 4, 5))
    assert lay.top_shapes == [(2, 12, 5)]
    x = torch.arange(120.0).reshape(2, 3, 4, 5)
    assert torch.equal(run(lay, x)[0], x.reshape(2, 12, 5))


@pytest.mark.parametrize("spec,bottom,expected", [
    ("shape { dim: 0 dim: -1 }", (2, 3, 4), (2, 12)),
    ("shape { dim: 0 dim: 2 dim: -1 dim: 0 }", (2, 6, 4), None),   # 0 at index 3 has no bottom axis
    ("shape { dim: 2 dim: 2 } axis: 1 num_axes: 1", (3, 4, 5), (3, 2, 2, 5)),
    ("shape { dim: 10 } axis: -3 num_axes: 2", (2, 3, 2, 5), (2, 3, 10)),   # -3 of 4 axes: start 2
    ("shape { dim: 1 } axis: -1 num_axes: 0", (2, 3), (2, 3, 1)),     # -1: insert after the last
    ("shape { dim: 1 } axis: 0 num_axes: 0", (2, 3), (1, 2, 3)),
    ("shape { dim: -1 dim: 5 }", (2, 3), None),                      # 6 not divisible by 5
])
def test_reshape_rules(spec, bottom, expected):
    text = f'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ {spec} }}'
    if expected is None:
        with pytest.raises(CaffeError):
            layer(text, bottom)
        return
    lay = layer(text, bottom)
    assert lay.top_shapes == [expected]
    x = torch.arange(float(np.prod(bottom))).reshape(bottom)
    assert torch.equal(run(lay, x)[0].reshape(-1), x.reshape(-1))


def test_slice_points_equal_parts_and_slice_dim():
    lay = layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" '
                'slice_param { axis: 1 slice_point: 1 slice_point: 4 }', (2, 6))
    assert lay.top_shapes == [(2, 1), (2, 3), (2, 2)]
    x = torch.arange(12.0).reshape(2, 6)
    a, b, c = run(lay, x)
    assert torch.equal(c, x[:, 4:])
    eq = layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_dim: 0 }', (4, 3))
    assert eq.top_shapes == [(2, 3), (2, 3)]
    with pytest.raises(CaffeError):
        layer('name: "s" type: "Slice" bottom: "x" top: "a" top: "b"', (2, 5))
    x = torch.randn(2, 6, requires_grad=True)
    a, b, c = lay(x)
    (a.sum() + 2 * b.sum() + 3 * c.sum()).backward()
    assert torch.equal(x.grad[0], torch.tensor([1.0, 2, 2, 2, 3, 3]))


def test_tile_repeats_the_trailing_block():
    lay = layer('name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 2 }', (1, 2, 2))
    x = torch.tensor([[[1.0, 2], [3, 4]]])
    (y,) = run(lay, x)
    assert torch.equal(y, torch.tensor([[[1.0, 2], [3, 4], [1, 2], [3, 4]]]))


@pytest.mark.parametrize("op,coeff,expected,grad", [
    ("SUM", 1, [2.0, 2.0], [[1, 1, 1], [2, 2, 2]]),
    ("ASUM", 2, [8.0, 8.0], [[-2, 0, 2], [-4, 4, 4]]),     # sign(0) = 0
    ("SUMSQ", 1, [10.0, 6.0], [[-2, 0, 6], [-4, 4, 8]]),
    ("MEAN", 3, [2.0, 2.0], [[1, 1, 1], [2, 2, 2]]),
])
def test_reduction(op, coeff, expected, grad):
    lay = layer(f'name: "r" type: "Reduction" bottom: "x" top: "y" '
                f'reduction_param {{ operation: {op} axis: 1 coeff: {coeff} }}', (2, 3))
    x = torch.tensor([[-1.0, 0, 3], [-1, 1, 2]])
    assert lay.top_shapes == [(2,)]
    assert torch.allclose(run(lay, x)[0], torch.tensor(expected))
    g, _ = grad_of(lay, x)
    assert torch.allclose(g, torch.tensor(grad, dtype=torch.float32))
    assert layer('name: "r" type: "Reduction" bottom: "x" top: "y"', (2, 3)).top_shapes == [()]


def test_filter_and_batch_reindex():
    lay = layer('name: "f" type: "Filter" bottom: "x" bottom: "s" top: "y"', (3, 2), (3, 1))
    x = torch.arange(6.0).reshape(3, 2).requires_grad_(True)
    (y,) = lay(x, torch.tensor([[1.0], [0.0], [1.0]]))
    assert torch.equal(y, torch.tensor([[0.0, 1], [4, 5]]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 1], [0, 0], [1, 1]]))
    br = layer('name: "b" type: "BatchReindex" bottom: "x" bottom: "p" top: "y"', (3, 2), (4,))
    x = torch.arange(6.0).reshape(3, 2).requires_grad_(True)
    (y,) = run(br, x, torch.tensor([2.0, 0, 2, 2]))
    assert torch.equal(y[:, 0], torch.tensor([4.0, 0, 4, 4]))
    y.sum().backward()
    assert torch.equal(x.grad[:, 0], torch.tensor([1.0, 0, 3]))


# ---------------------------------------------------------------- SPP
def test_spp_levels_and_one_level():
    lay = layer('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 }', (1, 1, 4, 4))
    assert lay.top_shapes == [(1, 5)]
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    (y,) = run(lay, x)
    assert torch.equal(y, torch.tensor([[15.0, 5, 7, 13, 15]]))   # global max, then 2x2 bins of 2x2
    ave = layer('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 pool: AVE }', (2, 3, 5, 5))
    assert ave.top_shapes == [(2, 3, 1, 1)]
    x = torch.randn(2, 3, 5, 5)
    assert torch.allclose(run(ave, x)[0], x.mean((2, 3), keepdim=True), atol=1e-6)
    # 5 rows into 2 bins: kernel 3, pad (6 - 5 + 1) // 2 = 1; bins cover rows -1..1 and 2..4
    odd = layer('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 }', (1, 1, 5, 5))
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    assert torch.equal(run(odd, x)[0], torch.tensor([[24.0, 6, 9, 21, 24]]))


# ---------------------------------------------------------------- through a Net, both spellings
V2_NET = """
name: "catalogue"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 2 dim: 2 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "ip" }
layer { name: "sc" type: "Scale" bottom: "ip" top: "ip" scale_param { bias_term: true } }
layer { name: "act" type: "TanH" bottom: "ip" top: "ip" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

V1_NET = """
name: "catalogue"
layers { name: "data" type: DUMMY_DATA top: "data" top: "label"
  dummy_data_param { num: 4 channels: 3 channels: 1 height: 2 height: 1 width: 2 width: 1
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layers { name: "flat" type: FLATTEN bottom: "data" top: "flat" }
layers { name: "ip" type: INNER_PRODUCT bottom: "flat" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layers { name: "act" type: SIGMOID bottom: "ip" top: "ip" }
layers { name: "acc" type: ACCURACY bottom: "ip" bottom: "label" top: "acc" }
layers { name: "loss" type: EUCLIDEAN_LOSS bottom: "ip" bottom: "ip2" top: "loss" }
layers { name: "ip2" type: SPLIT bottom: "ip" top: "ip2" }
"""


def test_net_runs_catalogue_layers_and_learns():
    from caffe.net import Net
    net = Net(V2_NET, phase="TRAIN")
    assert net.blob_shapes["ip"] == (4, 3) and net.blob_shapes["acc"] == ()
    assert [p.lr_mult for p in net.learnable_params() if p.layer == "bn"] == [0.0, 0.0, 0.0]
    blobs = net(outputs="all")
    assert tuple(blobs["data"].shape) == (4, 3, 2, 2) and torch.equal(blobs["label"], torch.ones(4))
    loss = net.loss(blobs)
    loss.backward()
    assert net.layer("ip").blobs[0].grad is not None and net.layer("bn").blobs[2].item() == 1.0


def test_net_v1_enum_spellings():
    from caffe.net import Net
    text = V1_NET.replace('layers { name: "ip2" type: SPLIT bottom: "ip" top: "ip2" }\n', "")
    text = text.replace('layers { name: "loss"', 'layers { name: "ip2" type: SPLIT bottom: "ip" top: "ip2" }\nlayers { name: "loss"')
    net = Net(text, phase="TRAIN")
    assert [l.type for l in net.layers] == ["DummyData", "Flatten", "InnerProduct", "Sigmoid", "Accuracy",
                                            "Split", "EuclideanLoss"]
    blobs = net(outputs="all")
    assert blobs["loss"].item() == 0.0 and tuple(blobs["flat"].shape) == (4, 12)
