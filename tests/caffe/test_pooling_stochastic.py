"""STOCHASTIC pooling (caffe/layer/pooling.py, caffe/layer/spp.py) with BVLC's GPU kernels'
semantics: TRAIN samples one element per window with probability proportional to its value and
routes the gradient there; TEST gives sum(a^2) / sum(a)."""
import pytest
import torch
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.net import Net
from caffe.proto import caffe_pb2


def pool(params, shape, phase):
    lp = text_format.Parse(f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: STOCHASTIC {params} }}',
                           caffe_pb2.LayerParameter())
    return make_layer(lp, [shape], phase)


X = torch.tensor([[[[1.0, 2.0, 0.0, 0.0, 5.0],
                    [3.0, 4.0, 0.0, 0.0, 1.0],
                    [0.0, 6.0, 0.0, 0.0, 0.0]]]])


def test_test_phase_is_sum_of_squares_over_sum_by_hand():
    layer = pool("kernel_size: 2 stride: 2", tuple(X.shape), "TEST")
    assert layer.top_shapes == [(1, 1, 2, 3)]                          # ceil: windows clipped at the border
    (y,) = layer(X)
    expected = [[30 / 10, 0.0, 26 / 6], [36 / 6, 0.0, 0.0]]           # 0 where the window sums to 0
    assert torch.allclose(y[0, 0], torch.tensor(expected))
    g = pool("global_pooling: true", tuple(X.shape), "TEST")(X)[0]
    assert torch.allclose(g.flatten(), torch.tensor([(X * X).sum() / X.sum()]))


def test_train_samples_in_proportion_to_the_values_and_routes_the_gradient():
    torch.manual_seed(0)
    n = 20000
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2).repeat(n, 1, 1, 1).requires_grad_()
    (y,) = pool("kernel_size: 2", (n, 1, 2, 2), "TRAIN")(x)
    freq = torch.stack([(y.flatten() == v).float().mean() for v in (1.0, 2.0, 3.0, 4.0)])
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015)
    y.sum().backward()
    grad = x.grad.reshape(n, 4)
    assert (grad.sum(1) == 1).all()                                    # one element per window
    picked = grad.argmax(1)
    assert torch.equal(x.detach().reshape(n, 4).gather(1, picked[:, None]).flatten(), y.detach().flatten())


def test_train_overlapping_windows_and_zero_windows_as_caffe():
    torch.manual_seed(1)
    layer = pool("kernel_size: 2 stride: 1", (1, 1, 3, 3), "TRAIN")
    x = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 7.0, 0.0], [0.0, 0.0, 0.0]]]], requires_grad=True)
    (y,) = layer(x)
    assert y.tolist() == [[[[7.0, 7.0], [7.0, 7.0]]]]                 # the only positive element, every time
    y.sum().backward()
    assert x.grad[0, 0, 1, 1] == 4 and x.grad.sum() == 4               # the four windows' diffs add up
    z = torch.zeros(1, 1, 2, 2, requires_grad=True)
    (y0,) = pool("kernel_size: 2", (1, 1, 2, 2), "TRAIN")(z)
    y0.sum().backward()
    assert y0.item() == 0 and z.grad.flatten().tolist() == [1, 0, 0, 0]   # cumsum 0 >= 0 at the first element


def test_padding_is_refused_and_spp_follows_caffe():
    with pytest.raises(CaffeError, match=r"layer 'p' \(Pooling\): padding is implemented only for AVE and MAX"):
        pool("kernel_size: 3 pad: 1", (1, 1, 4, 4), "TRAIN")
    spp = ('name: "n" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
           'layer { name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 pool: STOCHASTIC } }')
    net = Net(spp, "TEST")
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.manual_seed(2)
    y = net(x=x)["y"][0]
    assert y.shape == (5,)
    # Caffe's SPP builds its Pooling layers without a phase, i.e. TRAIN: every bin holds a sampled element
    assert y[0] in x and all(v in x[0, 0, :2, :2] or v in x[0, 0, :2, 2:] or v in x[0, 0, 2:, :2]
                             or v in x[0, 0, 2:, 2:] for v in y[1:])
    odd = spp.replace("dim: 4 dim: 4", "dim: 5 dim: 5")
    with pytest.raises(CaffeError, match="padding is implemented only for AVE and MAX"):
        Net(odd, "TEST")


def test_a_train_net_samples_and_a_test_net_does_not():
    text = ('name: "n" layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 } }')
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]]) * torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2)
    assert Net(text, "TEST")(x=x)["y"].item() == pytest.approx(20 / 8)
    torch.manual_seed(3)
    train = {Net(text, "TRAIN")(x=x)["y"].item() for _ in range(30)}
    assert train == {1.0, 3.0}
