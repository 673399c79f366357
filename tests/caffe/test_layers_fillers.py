"""Caffe's fillers (filler.hpp) against hand-computed values and bounds."""
import math

import pytest
import torch
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.layer.fillers import bilinear_kernel, fill
from caffe.proto import caffe_pb2


class _Owner:
    """Stands in for a layer: fillers name it in their errors."""

    def error(self, message):
        return CaffeError(f"layer 'w' (Test): {message}")


def filled(shape, spec, seed=0):
    torch.manual_seed(seed)
    t = torch.empty(shape)
    fill(t, text_format.Parse(spec, caffe_pb2.FillerParameter()), _Owner())
    return t


def test_bilinear_kernels_by_hand():
    # size 4: f = 2, c = 3/4; 1 - |x/2 - 3/4| = 1/4, 3/4, 3/4, 1/4 along each axis
    ramp4 = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)
    assert torch.equal(bilinear_kernel(4), torch.outer(ramp4, ramp4))
    assert bilinear_kernel(4)[1, 1].item() == 0.5625 and bilinear_kernel(4)[0, 3].item() == 0.0625
    # size 3: f = 2, c = 1/2; 1/2, 1, 1/2
    ramp3 = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
    assert torch.equal(bilinear_kernel(3), torch.outer(ramp3, ramp3))
    # size 5: f = 3, c = 2/3; 1 - |x/3 - 2/3| = 1/3, 2/3, 1, 2/3, 1/3
    assert torch.allclose(bilinear_kernel(5)[2], torch.tensor([1 / 3, 2 / 3, 1, 2 / 3, 1 / 3], dtype=torch.float64))
    # the filler writes the same kernel into every (out, in) plane
    w = filled((3, 1, 4, 4), 'type: "bilinear"')
    assert all(torch.equal(w[i, 0], bilinear_kernel(4).float()) for i in range(3))


def test_bilinear_deconvolution_upsamples_like_fcn():
    # factor 2: kernel 4, stride 2, pad 1. In 1-D, [a, b] -> [3a/4, 3a/4 + b/4, a/4 + 3b/4, 3b/4];
    # a 1-row input gives 2 rows, each weighted 3/4 along the other axis.
    lp = text_format.Parse('name: "up" type: "Deconvolution" bottom: "x" top: "y" convolution_param { '
                           'num_output: 1 group: 1 kernel_size: 4 stride: 2 pad: 1 bias_term: false '
                           'weight_filler { type: "bilinear" } }', caffe_pb2.LayerParameter())
    up = make_layer(lp, [(1, 1, 1, 2)], "TEST")
    (y,) = up(torch.tensor([[[[1.0, 2.0]]]]))
    row = [0.75 * v for v in (0.75, 1.25, 1.75, 1.5)]
    assert y.shape == (1, 1, 2, 4)
    assert torch.allclose(y[0, 0], torch.tensor([row, row]))


def test_positive_unitball_rows_sum_to_one():
    w = filled((4, 3, 2, 2), 'type: "positive_unitball"')
    assert bool(((w >= 0) & (w <= 1)).all())
    assert torch.allclose(w.reshape(4, -1).sum(1), torch.ones(4))
    assert len(set(w.reshape(-1).tolist())) > 1                 # random, not a constant 1/12


@pytest.mark.parametrize("norm,n", [("FAN_IN", 12), ("FAN_OUT", 16), ("AVERAGE", 14)])
def test_xavier_bounds_follow_variance_norm(norm, n):
    # shape (4, 3, 2, 2): count 48, fan_in = 48 / 4 = 12, fan_out = 48 / 3 = 16, average 14
    w = filled((4, 3, 2, 2), f'type: "xavier" variance_norm: {norm}')
    scale = math.sqrt(3.0 / n)
    assert w.abs().max().item() <= scale
    big = filled((400, 300, 2, 2), f'type: "xavier" variance_norm: {norm}')
    # U(-s, s) over many draws reaches close to s (fans 1200 / 1600 / 1400 here)
    big_scale = math.sqrt(3.0 / {"FAN_IN": 1200, "FAN_OUT": 1600, "AVERAGE": 1400}[norm])
    assert 0.99 * big_scale < big.abs().max().item() <= big_scale


def test_msra_std_and_one_axis_fan_out():
    w = filled((10, 1000), 'type: "msra" variance_norm: FAN_OUT')    # fan_out = 10000 / 1000 = 10
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / 10), rel=0.03)
    w = filled((10, 1000), 'type: "msra"')                            # fan_in = 1000
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / 1000), rel=0.03)
    b = filled((20000,), 'type: "msra" variance_norm: FAN_OUT')       # 1 axis: fan_out = count
    assert b.std().item() == pytest.approx(math.sqrt(2.0 / 20000), rel=0.03)


def test_constant_uniform_gaussian_and_sparse():
    assert torch.equal(filled((2, 3), 'type: "constant" value: 0.5'), torch.full((2, 3), 0.5))
    assert torch.equal(filled((2, 3), ''), torch.zeros(2, 3))          # default: constant 0
    u = filled((1000,), 'type: "uniform" min: 2 max: 3')
    assert 2 <= u.min().item() and u.max().item() <= 3
    g = filled((100, 100), 'type: "gaussian" mean: 1 std: 0.5')
    assert g.mean().item() == pytest.approx(1, abs=0.02) and g.std().item() == pytest.approx(0.5, rel=0.03)
    # sparse 2 over 4 outputs: each weight stays with probability 1/2
    s = filled((4, 10000), 'type: "gaussian" sparse: 2')
    assert (s != 0).float().mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("spec,message", [
    ('type: "bogus"', "unknown filler type 'bogus' \\(Caffe's fillers: constant, gaussian, positive_unitball"),
    ('type: "xavier" sparse: 3', "filler 'xavier' does not support sparse"),
    ('type: "gaussian" sparse: -2', "gaussian filler's sparse must be >= -1, got -2"),
    ('type: "bilinear"', "filler 'bilinear' needs a 4-axis blob"),
])
def test_filler_errors_name_the_layer(spec, message):
    with pytest.raises(CaffeError, match="layer 'w' \\(Test\\): " + message):
        filled((2, 3), spec)
    with pytest.raises(CaffeError, match="needs a square kernel, got 3x2"):
        filled((1, 1, 3, 2), 'type: "bilinear"')


def test_unknown_filler_in_a_net_names_the_layer():
    lp = text_format.Parse('name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { '
                           'num_output: 2 weight_filler { type: "orthogonal" } }', caffe_pb2.LayerParameter())
    with pytest.raises(CaffeError, match=r"layer 'fc' \(InnerProduct\): unknown filler type 'orthogonal'"):
        make_layer(lp, [(1, 3)], "TEST")
