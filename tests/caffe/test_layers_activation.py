"""Element-wise, scale/bias and normalisation layers of BVLC's catalogue: forward values and
Caffe's gradients, hand-computed or checked numerically in float64."""
import math

import pytest
import torch
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.proto import caffe_pb2


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def neuron(kind, params="", shape=(1, 5)):
    return layer(f'name: "n" type: "{kind}" bottom: "x" top: "y" {params}', shape)


def grad(lay, x, *rest):
    x = x.clone().requires_grad_(True)
    (y,) = lay(x, *rest)
    assert tuple(y.shape) == tuple(x.shape)
    y.sum().backward()
    return y.detach(), x.grad


def gradcheck(lay, x, *rest):
    lay.double()
    x = x.double().requires_grad_(True)
    rest = [r.double() for r in rest]
    assert torch.autograd.gradcheck(lambda t: lay(t, *rest)[0], (x,), eps=1e-6, atol=1e-5)


X = torch.tensor([[-2.0, -0.5, 0.0, 0.5, 2.0]])


def test_sigmoid_tanh_absval():
    y, g = grad(neuron("Sigmoid"), X)
    s = 1 / (1 + torch.exp(-X))
    assert torch.allclose(y, s) and torch.allclose(g, s * (1 - s))
    y, g = grad(neuron("TanH"), X)
    assert torch.allclose(g, 1 - torch.tanh(X) ** 2)
    y, g = grad(neuron("AbsVal"), X)
    assert torch.equal(y, X.abs()) and torch.equal(g, torch.tensor([[-1.0, -1, 0, 1, 1]]))


@pytest.mark.parametrize("power,scale,shift,x,y,g", [
    (2, 3, 1, 1.0, 16.0, 24.0),          # (1 + 3)^2; 2*3*(1+3)
    (1, 2, 5, 1.0, 7.0, 2.0),
    (3, 1, 0, 0.0, 0.0, float("nan")),   # Caffe: power * y / x = 0/0 at x = 0
    (0.5, 2, 1, 4.0, 3.0, 1 / 3),        # 0.5*2*3/9
    (0, 2, 1, 4.0, 1.0, 0.0),
])
def test_power_caffe_gradient(power, scale, shift, x, y, g):
    lay = neuron("Power", f"power_param {{ power: {power} scale: {scale} shift: {shift} }}", (1,))
    out, gx = grad(lay, torch.tensor([x]))
    assert out.item() == pytest.approx(y)
    if math.isnan(g):
        assert math.isnan(gx.item())
    else:
        assert gx.item() == pytest.approx(g)


def test_exp_and_log_with_base_scale_shift():
    lay = neuron("Exp", "exp_param { base: 2 scale: 3 shift: 1 }", (1,))
    y, g = grad(lay, torch.tensor([1.0]))
    assert y.item() == pytest.approx(16.0) and g.item() == pytest.approx(16 * 3 * math.log(2))
    lay = neuron("Log", "log_param { base: 10 scale: 2 shift: 10 }", (1,))
    y, g = grad(lay, torch.tensor([45.0]))
    assert y.item() == pytest.approx(2.0) and g.item() == pytest.approx(2 / (100 * math.log(10)))
    y, _ = grad(neuron("Exp", "", (1,)), torch.tensor([1.0]))
    assert y.item() == pytest.approx(math.e)


def test_bnll_stable_and_caffe_gradient():
    x = torch.tensor([[-100.0, -1.0, 0.0, 1.0, 100.0]])
    y, g = grad(neuron("BNLL"), x)
    assert torch.allclose(y, torch.tensor([[0.0, math.log1p(math.e ** -1), math.log(2), 1 + math.log1p(math.e ** -1), 100.0]]))
    assert torch.allclose(g, torch.sigmoid(x)) and g[0, 2].item() == 0.5
    gradcheck(neuron("BNLL"), torch.randn(1, 5))


def test_threshold_has_no_gradient():
    lay = neuron("Threshold", "threshold_param { threshold: 0.5 }")
    (y,) = lay(X.clone().requires_grad_(True))
    assert torch.equal(y, torch.tensor([[0.0, 0, 0, 0, 1]])) and not y.requires_grad


def test_elu_and_kink_at_zero():
    y, g = grad(neuron("ELU", "elu_param { alpha: 2 }"), X)
    assert torch.allclose(y, torch.tensor([[2 * (math.exp(-2) - 1), 2 * (math.exp(-0.5) - 1), 0, 0.5, 2]]))
    assert torch.allclose(g, torch.tensor([[2 * math.exp(-2), 2 * math.exp(-0.5), 2.0, 1, 1]]))   # y + alpha at x <= 0


def test_prelu_channelwise_shared_and_kink():
    lay = layer('name: "p" type: "PReLU" bottom: "x" top: "y"', (1, 2, 3))
    assert tuple(lay.blobs[0].shape) == (2,) and torch.equal(lay.blobs[0].data, torch.full((2,), 0.25))
    with torch.no_grad():
        lay.blobs[0].copy_(torch.tensor([0.1, 0.5]))
    x = torch.tensor([[[-1.0, 0.0, 2.0], [-2.0, 0.0, 3.0]]])
    y, g = grad(lay, x)
    assert torch.allclose(y, torch.tensor([[[-0.1, 0, 2], [-1, 0, 3]]]))
    assert torch.allclose(g, torch.tensor([[[0.1, 0.1, 1], [0.5, 0.5, 1]]]))       # slope at x == 0
    assert torch.allclose(lay.blobs[0].grad, torch.tensor([-1.0, -2.0]))            # sum of x for x <= 0
    shared = layer('name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true '
                   'filler { type: "constant" value: 0.3 } }', (1, 2, 3))
    assert tuple(shared.blobs[0].shape) == () and shared.blobs[0].item() == pytest.approx(0.3)
    gradcheck(shared, torch.randn(2, 2, 3))


def test_prelu_runs_torchs_prelu_with_caffes_backward(monkeypatch):
    """PReLU's forward is torch.nn.functional.prelu (a third of ENet's forward time was the
    composed formula); the gradients stay Caffe's, the shared slope's included."""
    calls = []
    real = torch.nn.functional.prelu
    monkeypatch.setattr(torch.nn.functional, "prelu", lambda x, a: calls.append(tuple(a.shape)) or real(x, a))
    shared = layer('name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true '
                   'filler { type: "constant" value: 0.3 } }', (1, 2, 2))
    channel = layer('name: "p" type: "PReLU" bottom: "x" top: "y"', (1, 2, 2))
    x = torch.tensor([[[-1.0, 0.0], [2.0, -3.0]]])
    y, g = grad(shared, x)
    assert torch.allclose(y, torch.tensor([[[-0.3, 0], [2, -0.9]]]))
    assert torch.allclose(g, torch.tensor([[[0.3, 0.3], [1, 0.3]]]))      # slope at x <= 0, as Caffe
    assert shared.blobs[0].grad.item() == pytest.approx(-4.0)             # sum of x over x <= 0
    grad(channel, x)
    assert calls == [(1,), (2,)]


def test_clip_gradient_includes_bounds():
    y, g = grad(neuron("Clip", "clip_param { min: -0.5 max: 0.5 }"), X)
    assert torch.equal(y, torch.tensor([[-0.5, -0.5, 0, 0.5, 0.5]]))
    assert torch.equal(g, torch.tensor([[0.0, 1, 1, 1, 0]]))


def test_swish():
    y, g = grad(neuron("Swish", "swish_param { beta: 2 }"), X)
    s = torch.sigmoid(2 * X)
    assert torch.allclose(y, X * s)
    assert torch.allclose(g, 2 * y + s * (1 - 2 * y))   # Caffe's beta*y + sig*(1 - beta*y)


# ---------------------------------------------------------------- Scale / Bias
def test_scale_learnable_with_bias_and_num_axes():
    lay = layer('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true '
                'bias_filler { type: "constant" value: 1 } }', (2, 3, 2))
    assert [tuple(b.shape) for b in lay.blobs] == [(3,), (3,)]
    assert torch.equal(lay.blobs[0].data, torch.ones(3))   # default filler constant 1
    with torch.no_grad():
        lay.blobs[0].copy_(torch.tensor([1.0, 2, 3]))
    x = torch.ones(2, 3, 2)
    (y,) = lay(x)
    assert torch.equal(y[0, :, 0], torch.tensor([2.0, 3, 4]))
    y.sum().backward()
    assert torch.equal(lay.blobs[0].grad, torch.full((3,), 4.0)) and torch.equal(lay.blobs[1].grad, torch.full((3,), 4.0))
    two = layer('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: 1 num_axes: 2 }', (2, 3, 2))
    assert tuple(two.blobs[0].shape) == (3, 2)
    scalar = layer('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 }', (2, 3))
    assert tuple(scalar.blobs[0].shape) == ()


def test_scale_and_bias_from_second_bottom():
    lay = layer('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { bias_term: true }',
                (2, 3, 4), (3, 4))
    assert len(lay.blobs) == 1 and tuple(lay.blobs[0].shape) == (3, 4)   # the bias only, num_axes = 2
    x = torch.randn(2, 3, 4)
    s = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(CaffeError):
        layer('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y"', (2, 3, 4), (3, 3))
    lay = layer('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 0 }', (2, 3, 4), (2, 3))
    (y,) = lay(x, s)
    assert torch.allclose(y, x * s[:, :, None])
    y.sum().backward()
    assert torch.allclose(s.grad, x.sum(2))
    b = layer('name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y" bias_param { axis: 1 }', (2, 3, 4), (3, 4))
    bb = torch.randn(3, 4)
    assert torch.allclose(b(x, bb)[0], x + bb)
    learn = layer('name: "b" type: "Bias" bottom: "x" top: "y"', (2, 3, 4))
    assert tuple(learn.blobs[0].shape) == (3,) and not learn.blobs[0].any()


# ---------------------------------------------------------------- BatchNorm
def test_batch_norm_train_updates_caffe_blobs():
    lay = layer('name: "bn" type: "BatchNorm" bottom: "x" top: "x" batch_norm_param { eps: 0 '
                'moving_average_fraction: 0.5 }', (2, 2, 1), phase="TRAIN")
    assert [tuple(b.shape) for b in lay.blobs] == [(2,), (2,), (1,)]
    assert [p.lr_mult for p in lay.param.param] == [0.0, 0.0, 0.0]
    x = torch.tensor([[[1.0], [0.0]], [[3.0], [4.0]]])   # channel 0: 1, 3; channel 1: 0, 4
    (y,) = lay(x)
    assert torch.allclose(y[:, 0, 0], torch.tensor([-1.0, 1.0])) and torch.allclose(y[:, 1, 0], torch.tensor([-1.0, 1.0]))
    # mean (2, 2), biased var (1, 4), m = 2 -> unbiased (2, 8); s = 0*0.5 + 1
    assert torch.allclose(lay.blobs[0].data, torch.tensor([2.0, 2.0]))
    assert torch.allclose(lay.blobs[1].data, torch.tensor([2.0, 8.0]))
    assert lay.blobs[2].item() == 1.0
    lay(x)
    assert lay.blobs[2].item() == 1.5 and torch.allclose(lay.blobs[0].data, torch.tensor([3.0, 3.0]))
    gradcheck(layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', (3, 2, 2), phase="TRAIN"),
              torch.randn(3, 2, 2))


def test_batch_norm_test_uses_scaled_global_stats():
    lay = layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y"', (1, 2, 1, 1))   # TEST: global stats
    with torch.no_grad():
        lay.blobs[0].copy_(torch.tensor([4.0, 2.0]))
        lay.blobs[1].copy_(torch.tensor([8.0, 2.0]))
        lay.blobs[2].fill_(2.0)                       # mean (2, 1), var (4, 1)
    x = torch.tensor([[[[4.0]], [[3.0]]]])
    y, g = grad(lay, x)
    eps = 1e-5
    assert torch.allclose(y.reshape(-1), torch.tensor([2 / math.sqrt(4 + eps), 2 / math.sqrt(1 + eps)]))
    assert torch.allclose(g.reshape(-1), torch.tensor([1 / math.sqrt(4 + eps), 1 / math.sqrt(1 + eps)]))
    with torch.no_grad():
        lay.blobs[2].zero_()                          # scale factor 0 -> statistics 0
    assert torch.allclose(lay(x)[0], x / math.sqrt(eps))
    train = layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { use_global_stats: false }',
                  (1, 2, 1, 1))
    assert not train.use_global
    with pytest.raises(CaffeError):
        layer('name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 1 }', (1, 2, 1, 1))


# ---------------------------------------------------------------- MVN / LRN
def test_mvn_values_and_caffe_gradient():
    lay = layer('name: "m" type: "MVN" bottom: "x" top: "y"', (1, 2, 2))
    x = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    (y,) = lay(x)
    assert torch.allclose(y[0, 0], torch.tensor([-1.0, 1.0])) and torch.allclose(y[0, 1], torch.zeros(2))
    across = layer('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true '
                   'normalize_variance: false }', (1, 2, 2))
    assert torch.allclose(across(x)[0], x - 1.0)
    # float64 gradcheck with eps 0 against the exact gradient (Caffe's formula is exact then)
    exact = layer('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { eps: 0 }', (2, 3, 4))
    gradcheck(exact, torch.randn(2, 3, 4))


def test_lrn_across_and_within_channels():
    lay = layer('name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 3 beta: 0.5 k: 2 }',
                (1, 3, 1, 1))
    x = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    (y,) = lay(x)
    sums = torch.tensor([1 + 4, 1 + 4 + 9, 4 + 9.0])
    assert torch.allclose(y.reshape(-1), x.reshape(-1) / torch.sqrt(2 + 3 / 3 * sums))
    gradcheck(lay, torch.randn(1, 5, 2, 2))
    within = layer('name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 9 beta: 1 '
                   'norm_region: WITHIN_CHANNEL }', (1, 1, 2, 2))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,) = within(x)
    # every 3x3 window (zero padded) covers the whole 2x2 image: mean = 30 / 9
    assert torch.allclose(y, x / (1 + 9 * 30 / 9))
    with pytest.raises(CaffeError):
        layer('name: "l" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 4 }', (1, 3, 1, 1))


@pytest.mark.parametrize("kind,params", [
    ("Power", "power_param { power: 2.5 scale: 0.5 shift: 3 }"),
    ("Power", "power_param { power: 2 scale: -1 shift: 1 }"),
    ("ELU", "elu_param { alpha: 0.7 }"),
    ("Swish", "swish_param { beta: 1.5 }"),
    ("Exp", "exp_param { base: 3 scale: 0.5 shift: -1 }"),
    ("Log", "log_param { base: 2 scale: 0.5 shift: 4 }"),
    ("Sigmoid", ""), ("TanH", ""),
])
def test_smooth_neurons_gradcheck(kind, params):
    x = torch.randn(2, 3, dtype=torch.float64) * 0.5 + 0.3    # away from kinks; log argument > 0
    gradcheck(neuron(kind, params, (2, 3)), x)


def test_scale_gradcheck_all_inputs():
    lay = layer('name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { bias_term: true }',
                (2, 3, 2), (3,))
    lay.double()
    x = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    s = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: lay(a, b)[0], (x, s))


def test_mvn_gradient_is_caffes_formula_with_eps():
    lay = layer('name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { eps: 0.5 }', (1, 1, 4))
    x = torch.tensor([[[1.0, 2.0, 4.0, 9.0]]], dtype=torch.float64, requires_grad=True)
    (y,) = lay(x)
    g = torch.tensor([[[1.0, -2.0, 0.5, 3.0]]], dtype=torch.float64)
    (y * g).sum().backward()
    c = x.detach() - x.detach().mean()
    denom = c.pow(2).mean().sqrt() + 0.5
    yd = c / denom
    caffe = (g - g.mean() - yd * (g * yd).mean()) / denom   # not the exact derivative when eps != 0
    assert torch.allclose(x.grad, caffe)
    exact = torch.autograd.functional.vjp(lambda t: (t - t.mean()) / ((t - t.mean()).pow(2).mean().sqrt() + 0.5),
                                          x.detach(), g)[1]
    assert not torch.allclose(exact, caffe)
