"""BVLC's loss layers and Deconvolution / Im2col against hand-computed numbers, with
Caffe's gradients (its backward formulas, including where they differ from autograd's)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.proto import caffe_pb2


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def loss_and_grad(lay, x, *rest):
    x = x.clone().requires_grad_(True)
    tops = lay(x, *rest)
    assert [tuple(t.shape) for t in tops] == [tuple(s) for s in lay.top_shapes]
    tops[0].backward()
    return tops[0].item(), x.grad


def test_euclidean_loss():
    lay = layer('name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l"', (2, 2), (2, 2))
    assert lay.is_loss and lay.top_shapes == [()]
    a, b = torch.tensor([[1.0, 2], [3, 4]]), torch.tensor([[0.0, 2], [3, 1]])
    loss, g = loss_and_grad(lay, a, b)
    assert loss == pytest.approx((1 + 9) / 2 / 2)
    assert torch.equal(g, (a - b) / 2)


@pytest.mark.parametrize("norm,expected_div", [("", 2), ("loss_param { normalization: FULL }", 4),
                                                ("loss_param { normalize: true }", 4),
                                                ("loss_param { normalization: NONE }", 1)])
def test_sigmoid_cross_entropy_normalisation(norm, expected_div):
    lay = layer(f'name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" {norm}', (2, 2), (2, 2))
    x = torch.tensor([[0.0, 2.0], [-3.0, 50.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss, g = loss_and_grad(lay, x, t)
    expected = F.binary_cross_entropy_with_logits(x.double(), t.double(), reduction="sum").item() / expected_div
    assert loss == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(g, (torch.sigmoid(x) - t) / expected_div)


def test_sigmoid_cross_entropy_ignore_label_valid():
    lay = layer('name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l" '
                'loss_param { ignore_label: -1 normalization: VALID }', (1, 3), (1, 3))
    x = torch.tensor([[1.0, -1.0, 5.0]])
    loss, g = loss_and_grad(lay, x, torch.tensor([[1.0, -1.0, 0.0]]))
    assert loss == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(5))) / 2, rel=1e-5)
    assert g[0, 1].item() == 0 and g[0, 0].item() == pytest.approx((torch.sigmoid(torch.tensor(1.0)).item() - 1) / 2)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_and_caffe_gradient(legacy):
    text = 'contrastive_loss_param { margin: 2 legacy_version: true }' if legacy else 'contrastive_loss_param { margin: 2 }'
    lay = layer(f'name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "l" {text}',
                (3, 2, 1, 1), (3, 2, 1, 1), (3, 1, 1, 1))
    a = torch.tensor([[1.0, 0], [1, 0], [0, 0]]).reshape(3, 2, 1, 1).requires_grad_(True)
    b = torch.tensor([[0.0, 0], [0, 0], [3, 4]]).reshape(3, 2, 1, 1).requires_grad_(True)
    y = torch.tensor([1.0, 0, 0]).reshape(3, 1, 1, 1)
    (loss,) = lay(a, b, y)
    loss.backward()
    # pair 0 similar: d^2 = 1; pair 1 dissimilar d = 1; pair 2 dissimilar d = 5 (beyond the margin)
    if legacy:
        assert loss.item() == pytest.approx((1 + (2 - 1)) / 3 / 2)
        assert torch.allclose(a.grad[1].reshape(-1), torch.tensor([-1.0 / 3, 0]))
    else:
        assert loss.item() == pytest.approx((1 + (2 - 1) ** 2) / 3 / 2)
        assert torch.allclose(a.grad[1].reshape(-1), torch.tensor([-(2 - 1) / (1 + 1e-4) / 3, 0]))
    assert torch.allclose(a.grad[0].reshape(-1), torch.tensor([1.0 / 3, 0]))
    assert not a.grad[2].any() and torch.allclose(b.grad, -a.grad)


@pytest.mark.parametrize("norm,expected", [("L1", (0 + 1.5 + 0.5 + 1 + 1 + 3) / 2),
                                           ("L2", (0 + 2.25 + 0.25 + 1 + 1 + 9) / 2)])
def test_hinge_loss(norm, expected):
    lay = layer(f'name: "l" type: "HingeLoss" bottom: "x" bottom: "y" top: "l" hinge_loss_param {{ norm: {norm} }}',
                (2, 3), (2,))
    x = torch.tensor([[2.0, 0.5, -0.5], [0.0, 0.0, 2.0]])
    loss, g = loss_and_grad(lay, x, torch.tensor([0.0, 1.0]))
    # row 0: label 0: 1 - 2 -> 0; 1 + 0.5; 1 - 0.5. row 1: label 1: 1 + 0; 1 - 0; 1 + 2
    assert loss == pytest.approx(expected)
    if norm == "L1":
        assert torch.equal(g, torch.tensor([[0.0, 1, 1], [1, -1, 1]]) / 2)
    else:
        assert torch.allclose(g, torch.tensor([[0.0, 3, 1], [2, -2, 6]]) / 2)


def test_multinomial_logistic_loss_caffe_gradient_under_the_clamp():
    lay = layer('name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l"', (2, 2), (2,))
    p = torch.tensor([[0.25, 0.75], [0.0, 1.0]], dtype=torch.float64)
    loss, g = loss_and_grad(lay, p, torch.tensor([0.0, 0.0]))
    assert loss == pytest.approx((-math.log(0.25) - math.log(1e-20)) / 2)
    assert g[0, 0].item() == pytest.approx(-1 / 0.25 / 2)
    assert g[1, 0].item() == pytest.approx(-1 / 1e-20 / 2)     # Caffe: -1 / (N max(p, 1e-20))
    assert g[0, 1].item() == 0


def _write_blobproto(path, h):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(h.shape)
    blob.data.extend(h.reshape(-1).tolist())
    path.write_bytes(blob.SerializeToString())


def test_infogain_loss_from_bottom_and_source(tmp_path):
    h = np.array([[1.0, 0.5, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    x = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    label = torch.tensor([0.0, 1.0, 2.0])
    lay = layer('name: "l" type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "l" top: "p" '
                'loss_param { ignore_label: 2 }', (3, 3), (3,), (3, 3))
    loss, g = loss_and_grad(lay, x, label, torch.from_numpy(h))
    p = torch.softmax(x, 1)
    hd = torch.from_numpy(h).double()
    expected = -(hd[0] * p[0].log()).sum() - (hd[1] * p[1].log()).sum()
    assert loss == pytest.approx(expected.item() / 2)        # VALID: 2 labelled rows
    want = torch.stack([p[0] * hd[0].sum() - hd[0], p[1] * hd[1].sum() - hd[1], torch.zeros(3, dtype=torch.float64)]) / 2
    assert torch.allclose(g, want)
    _write_blobproto(tmp_path / "H.binaryproto", h.reshape(1, 1, 3, 3))
    src = layer(f'name: "l" type: "InfogainLoss" bottom: "x" bottom: "y" top: "l" '
                f'infogain_loss_param {{ source: "{tmp_path / "H.binaryproto"}" }} loss_param {{ ignore_label: 2 }}',
                (3, 3), (3,))
    assert src(x.float(), label)[0].item() == pytest.approx(expected.item() / 2, rel=1e-5)
    with pytest.raises(CaffeError):
        layer('name: "l" type: "InfogainLoss" bottom: "x" bottom: "y" top: "l"', (3, 3), (3,))


# ---------------------------------------------------------------- Deconvolution / Im2col
def test_deconvolution_shape_and_values():
    lay = layer('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
                'kernel_size: 4 stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" } }', (1, 2, 5, 5))
    assert tuple(lay.blobs[0].shape) == (2, 2, 4, 4) and tuple(lay.blobs[1].shape) == (4,)
    assert lay.top_shapes == [(1, 4, 10, 10)]          # 2 * (5 - 1) + 4 - 2
    one = layer('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
                'kernel_size: 2 stride: 2 bias_term: false weight_filler { type: "constant" value: 1 } }', (1, 1, 2, 2))
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    (y,) = one(x)
    assert torch.equal(y[0, 0], torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]))
    dil = layer('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 1 '
                'kernel_size: 3 dilation: 2 bias_term: false }', (1, 1, 3, 3))
    assert dil.top_shapes == [(1, 1, 7, 7)]             # 1 * 2 + 2 * 2 + 1
    # Deconvolution is the adjoint of Convolution with the same weights: <deconv(x), z> = <x, conv(z)>
    w = lay.blobs[0].detach()
    x, z = torch.randn(1, 2, 5, 5), torch.randn(1, 4, 10, 10)
    with torch.no_grad():
        lay.blobs[1].zero_()
    lhs = (lay(x)[0] * z).sum()
    rhs = (x * F.conv2d(z, w, None, 2, 1, 1, 2)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-4)


def test_im2col_order():
    lay = layer('name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 2 }', (1, 2, 2, 3))
    assert lay.top_shapes == [(1, 8, 1, 2)]
    x = torch.arange(12.0).reshape(1, 2, 2, 3)
    (y,) = lay(x)
    # column at output (0, 0): channel 0 rows 0-1 cols 0-1 = 0 1 3 4, then channel 1 = 6 7 9 10
    assert torch.equal(y[0, :, 0, 0], torch.tensor([0.0, 1, 3, 4, 6, 7, 9, 10]))


def test_deconvolution_gradcheck():
    lay = layer('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
                'kernel_size: 3 stride: 2 pad: 1 dilation: 2 weight_filler { type: "gaussian" } '
                'bias_filler { type: "constant" value: 0.1 } }', (1, 2, 3, 3))
    assert lay.top_shapes == [(1, 2, 7, 7)]             # 2 * 2 + 2 * 2 + 1 - 2
    lay.double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lay(t)[0], (x,))
    two = layer('name: "d" type: "Deconvolution" bottom: "a" bottom: "b" top: "y" top: "z" '
                'convolution_param { num_output: 1 kernel_size: 2 }', (1, 1, 2, 2), (1, 1, 2, 2))
    assert two.top_shapes == [(1, 1, 3, 3)] * 2
    with pytest.raises(CaffeError):
        layer('name: "d" type: "Deconvolution" bottom: "a" bottom: "b" top: "y" '
              'convolution_param { num_output: 1 kernel_size: 2 }', (1, 1, 2, 2), (1, 1, 2, 2))
