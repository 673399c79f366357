"""Convolution, Deconvolution and Im2col over any number of spatial axes (BVLC's
base_conv_layer.cpp / im2col_layer.cpp rules), against numpy loops written from Caffe's
definitions, hand-computed numbers, gradcheck, and the errors for what Caffe refuses."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.net import Net
from caffe.proto import caffe_pb2


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def conv_layer(kind, spec, *shapes):
    return layer(f'name: "c" type: "{kind}" bottom: "x" top: "y" convolution_param {{ {spec} }}', *shapes).double()


def positions(shape):
    return itertools.product(*(range(s) for s in shape))


def np_conv(x, w, b, stride, pad, dil, group):
    """Caffe's convolution by definition: y[n, o, p] = b[o] + sum over c in o's group and kernel
    offsets k of x[n, c, p * s - pad + k * d] w[o, c, k] (outside the input: 0)."""
    num, cin = x.shape[:2]
    out, kernel, size = w.shape[0], w.shape[2:], x.shape[2:]
    osize = [(size[i] + 2 * pad[i] - dil[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(len(size))]
    y = np.zeros((num, out, *osize))
    cg, og = cin // group, out // group
    for n, o in itertools.product(range(num), range(out)):
        g = o // og
        for p in positions(osize):
            acc = 0.0 if b is None else b[o]
            for c in range(cg):
                for k in positions(kernel):
                    idx = [p[i] * stride[i] - pad[i] + k[i] * dil[i] for i in range(len(size))]
                    if all(0 <= idx[i] < size[i] for i in range(len(size))):
                        acc += x[(n, g * cg + c, *idx)] * w[(o, c, *k)]
            y[(n, o, *p)] = acc
    return y


def np_deconv(x, w, b, stride, pad, dil, group):
    """Caffe's deconvolution by definition (col2im of W^T x): each input x[n, c, p] adds
    x w[c, o, k] at p * s - pad + k * d of output o in c's group."""
    num, cin = x.shape[:2]
    og, kernel, size = w.shape[1], w.shape[2:], x.shape[2:]
    osize = [stride[i] * (size[i] - 1) + dil[i] * (kernel[i] - 1) + 1 - 2 * pad[i] for i in range(len(size))]
    y = np.zeros((num, og * group, *osize))
    cg = cin // group
    for n, c in itertools.product(range(num), range(cin)):
        g = c // cg
        for p in positions(size):
            for o in range(og):
                for k in positions(kernel):
                    idx = [p[i] * stride[i] - pad[i] + k[i] * dil[i] for i in range(len(size))]
                    if all(0 <= idx[i] < osize[i] for i in range(len(size))):
                        y[(n, g * og + o, *idx)] += x[(n, c, *p)] * w[(c, o, *k)]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(size))
    return y


def np_im2col(x, kernel, stride, pad, dil):
    """Caffe's im2col_nd: row (c, k1, k2, ...) channel-major, column = output position."""
    num, cin, size = x.shape[0], x.shape[1], x.shape[2:]
    osize = [(size[i] + 2 * pad[i] - dil[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(len(size))]
    y = np.zeros((num, cin * int(np.prod(kernel)), *osize))
    for n, c in itertools.product(range(num), range(cin)):
        for r, k in enumerate(positions(kernel)):
            for p in positions(osize):
                idx = [p[i] * stride[i] - pad[i] + k[i] * dil[i] for i in range(len(size))]
                if all(0 <= idx[i] < size[i] for i in range(len(size))):
                    y[(n, c * int(np.prod(kernel)) + r, *p)] = x[(n, c, *idx)]
    return y


def blobs(lay):
    w = lay.blobs[0].detach().numpy()
    b = lay.blobs[1].detach().numpy() if len(lay.blobs) > 1 else None
    return w, b


FILL = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


# ---------------------------------------------------------------- hand-computed
def test_one_d_convolution_by_hand():
    conv = conv_layer("Convolution", 'num_output: 1 kernel_size: 3 stride: 2 pad: 1 bias_term: false', (1, 1, 5))
    conv.blobs[0].data[:] = torch.tensor([[[1.0, 0.0, -1.0]]])
    assert tuple(conv.blobs[0].shape) == (1, 1, 3) and conv.top_shapes == [(1, 1, 3)]   # (5 + 2 - 3) // 2 + 1
    (y,) = conv(torch.tensor([[[1.0, 2, 3, 4, 5]]], dtype=torch.float64))
    assert y.tolist() == [[[-2.0, -2.0, 4.0]]]     # padded 0 1 2 3 4 5 0: 0-2, 2-4, 4-0


def test_three_d_convolution_and_deconvolution_by_hand():
    conv = conv_layer("Convolution", 'num_output: 1 kernel_size: 2 weight_filler { type: "constant" value: 1 } '
                      'bias_filler { type: "constant" value: 1 }', (1, 1, 2, 2, 2))
    assert tuple(conv.blobs[0].shape) == (1, 1, 2, 2, 2) and conv.top_shapes == [(1, 1, 1, 1, 1)]
    (y,) = conv(torch.arange(8.0, dtype=torch.float64).reshape(1, 1, 2, 2, 2))
    assert y.item() == 0 + 1 + 2 + 3 + 4 + 5 + 6 + 7 + 1
    deconv = conv_layer("Deconvolution", 'num_output: 1 kernel_size: 2 stride: 2 bias_term: false '
                        'weight_filler { type: "constant" value: 1 }', (1, 1, 1, 1, 2))
    assert deconv.top_shapes == [(1, 1, 2, 2, 4)]
    (z,) = deconv(torch.tensor([[[[[1.0, 2.0]]]]], dtype=torch.float64))
    assert z[0, 0].tolist() == [[[1.0, 1, 2, 2]] * 2] * 2      # each input copied into its 2x2x2 block


# ---------------------------------------------------------------- against Caffe's definitions
CASES = [  # (bottom shape, convolution_param geometry, stride, pad, dilation, group)
    ((2, 4, 7), "kernel_size: 3 stride: 2 pad: 1 dilation: 2 group: 2", (2,), (1,), (2,), 2),
    ((1, 2, 4, 5, 3), "kernel_size: 2 kernel_size: 3 kernel_size: 2 stride: 1 stride: 2 stride: 1 pad: 1 pad: 0 "
     "pad: 1 dilation: 1 dilation: 1 dilation: 2", (1, 2, 1), (1, 0, 1), (1, 1, 2), 1),
    ((1, 2, 3, 4, 3, 3), "kernel_size: 2 pad: 1 stride: 2 group: 2", (2,) * 4, (1,) * 4, (1,) * 4, 2),   # 4-D
]


@pytest.mark.parametrize("shape, geometry, stride, pad, dil, group", CASES)
def test_convolution_matches_caffes_definition(shape, geometry, stride, pad, dil, group):
    torch.manual_seed(0)
    conv = conv_layer("Convolution", f"num_output: 4 {geometry} {FILL}", shape)
    w, b = blobs(conv)
    assert w.shape[:2] == (4, shape[1] // group)
    x = torch.randn(shape, dtype=torch.float64)
    expected = np_conv(x.numpy(), w, b, stride, pad, dil, group)
    (y,) = conv(x)
    assert conv.top_shapes == [expected.shape] and np.allclose(y.detach().numpy(), expected)


@pytest.mark.parametrize("shape, geometry, stride, pad, dil, group", CASES)
def test_deconvolution_matches_caffes_definition(shape, geometry, stride, pad, dil, group):
    torch.manual_seed(1)
    deconv = conv_layer("Deconvolution", f"num_output: 4 {geometry} {FILL}", shape)
    w, b = blobs(deconv)
    assert w.shape[:2] == (shape[1], 4 // group)      # Caffe's deconvolution blob: C_in x num_output / group
    x = torch.randn(shape, dtype=torch.float64)
    expected = np_deconv(x.numpy(), w, b, stride, pad, dil, group)
    (y,) = deconv(x)
    assert deconv.top_shapes == [expected.shape] and np.allclose(y.detach().numpy(), expected)


@pytest.mark.parametrize("shape, geometry, stride, pad, dil, group", CASES)
def test_im2col_matches_caffes_im2col_nd(shape, geometry, stride, pad, dil, group):
    kernel_sizes = [int(v) for v in text_format.Parse(geometry, caffe_pb2.ConvolutionParameter()).kernel_size]
    kernel = kernel_sizes * (len(shape) - 2) if len(kernel_sizes) == 1 else kernel_sizes
    im2col = conv_layer("Im2col", geometry, shape)
    x = torch.randn(shape, dtype=torch.float64)
    expected = np_im2col(x.numpy(), kernel, stride, pad, dil)
    (y,) = im2col(x)
    assert im2col.top_shapes == [expected.shape] and np.array_equal(y.numpy(), expected)


def test_generic_path_agrees_with_torch_on_a_four_d_net_of_one_wide_axis():
    # a 4-D convolution whose last axis has size 1 and kernel 1 is a 3-D one (torch's conv3d)
    torch.manual_seed(2)
    four = conv_layer("Convolution", "num_output: 3 kernel_size: 3 kernel_size: 2 kernel_size: 2 kernel_size: 1 "
                      f"pad: 1 pad: 0 pad: 1 pad: 0 stride: 2 stride: 1 stride: 1 stride: 1 {FILL}", (2, 2, 5, 4, 3, 1))
    three = conv_layer("Convolution", "num_output: 3 kernel_size: 3 kernel_size: 2 kernel_size: 2 "
                       "pad: 1 pad: 0 pad: 1 stride: 2 stride: 1 stride: 1", (2, 2, 5, 4, 3))
    three.blobs[0].data[:] = four.blobs[0].data[..., 0]
    three.blobs[1].data[:] = four.blobs[1].data
    x = torch.randn(2, 2, 5, 4, 3, dtype=torch.float64)
    assert torch.allclose(four(x[..., None])[0][..., 0], three(x)[0])


def test_zero_spatial_axes_is_a_grouped_inner_product():
    conv = conv_layer("Convolution", f"num_output: 4 group: 2 {FILL}", (3, 6))      # kernel_size may be absent
    assert tuple(conv.blobs[0].shape) == (4, 3) and conv.top_shapes == [(3, 4)]
    w, b = blobs(conv)
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = np.concatenate([x[:, :3].numpy() @ w[:2].T, x[:, 3:].numpy() @ w[2:].T], 1) + b
    assert np.allclose(conv(x)[0].detach().numpy(), expected)
    deconv = conv_layer("Deconvolution", f"num_output: 2 kernel_size: 1 {FILL}", (3, 6))
    assert tuple(deconv.blobs[0].shape) == (6, 2) and deconv.top_shapes == [(3, 2)]
    w, b = blobs(deconv)
    assert np.allclose(deconv(x)[0].detach().numpy(), x.numpy() @ w + b)


def test_channel_axis_other_than_one():
    torch.manual_seed(3)
    conv = conv_layer("Convolution", f"num_output: 2 kernel_size: 3 axis: 2 {FILL}", (2, 3, 4, 6))
    assert conv.top_shapes == [(2, 3, 2, 4)] and tuple(conv.blobs[0].shape) == (2, 4, 3)
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    w, b = blobs(conv)
    expected = np_conv(x.reshape(6, 4, 6).numpy(), w, b, (1,), (0,), (1,), 1).reshape(2, 3, 2, 4)
    assert np.allclose(conv(x)[0].detach().numpy(), expected)
    neg = conv_layer("Convolution", "num_output: 2 kernel_size: 3 axis: -2", (2, 3, 4, 6))
    assert neg.axis == 2 and neg.top_shapes == conv.top_shapes
    im2col = conv_layer("Im2col", "kernel_size: 2 axis: 0", (3, 4, 5))              # no batch axis
    assert im2col.top_shapes == [(12, 3, 4)]
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    assert np.array_equal(im2col(x)[0].numpy(), np_im2col(x[None].numpy(), (2, 2), (1, 1), (0, 0), (1, 1))[0])


def test_force_nd_im2col_changes_nothing():
    torch.manual_seed(4)
    plain = conv_layer("Convolution", f"num_output: 2 kernel_size: 3 pad: 1 {FILL}", (1, 2, 5, 5))
    forced = conv_layer("Convolution", "num_output: 2 kernel_size: 3 pad: 1 force_nd_im2col: true", (1, 2, 5, 5))
    forced.load_state_dict(plain.state_dict())
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    assert torch.equal(plain(x)[0], forced(x)[0])


def test_pad_h_alone_means_pad_w_zero_as_in_caffe():
    conv = conv_layer("Convolution", "num_output: 1 kernel_size: 3 pad_h: 1", (1, 1, 5, 5))
    assert conv.pad == (1, 0) and conv.top_shapes == [(1, 1, 5, 3)]


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind, shape, geometry", [
    ("Convolution", (1, 2, 6), "kernel_size: 3 stride: 2 pad: 1 dilation: 2 group: 2"),
    ("Convolution", (1, 2, 3, 4, 3), "kernel_size: 2 pad: 1 stride: 1 stride: 2 stride: 1"),
    ("Convolution", (1, 2, 3, 2, 3, 2), "kernel_size: 2 pad: 1 stride: 2 dilation: 1"),
    ("Deconvolution", (1, 2, 3), "kernel_size: 3 stride: 2 pad: 1"),
    ("Deconvolution", (1, 2, 2, 3, 2), "kernel_size: 2 stride: 2 pad: 1 dilation: 2 group: 2"),
    ("Deconvolution", (1, 2, 2, 1, 2, 2),
     "kernel_size: 2 kernel_size: 1 kernel_size: 2 kernel_size: 2 stride: 2 pad: 1 pad: 0 pad: 1 pad: 1"),
    ("Im2col", (1, 2, 3, 4, 3), "kernel_size: 2 stride: 2 pad: 1"),
])
def test_gradients(kind, shape, geometry):
    torch.manual_seed(5)
    out = "" if kind == "Im2col" else f"num_output: 2 {FILL}"
    lay = conv_layer(kind, f"{out} {geometry}", shape)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = tuple(lay.blobs)
    names = [f"blobs.{i}" for i in range(len(params))]

    def run(x, *ps):
        return torch.func.functional_call(lay, dict(zip(names, ps)), (x,))[0]

    assert torch.autograd.gradcheck(run, (x,) + params)


def test_three_d_net_forward_and_backward():
    net = Net('name: "v" force_backward: true '
              'layer { name: "in" type: "Input" top: "x" '
              'input_param { shape { dim: 2 dim: 3 dim: 4 dim: 6 dim: 5 } } } '
              'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 '
              'kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "xavier" } } } '
              'layer { name: "d" type: "Deconvolution" bottom: "c" top: "d" convolution_param { num_output: 3 '
              'kernel_size: 2 stride: 2 weight_filler { type: "xavier" } } }', "TRAIN")
    assert net.blob_shapes["c"] == (2, 4, 2, 3, 3) and net.blob_shapes["d"] == (2, 3, 4, 6, 6)
    x = torch.randn(2, 3, 4, 6, 5)
    d = net.forward({"x": x})["d"]
    d.sum().backward()
    assert tuple(d.shape) == (2, 3, 4, 6, 6) and net.layer("c").blobs[0].grad.shape == (4, 3, 3, 3, 3)


# ---------------------------------------------------------------- what Caffe refuses
@pytest.mark.parametrize("kind, spec, shape, message", [
    ("Convolution", "kernel_h: 3 kernel_w: 3", (1, 1, 4, 4, 4),
     r"kernel_h and kernel_w can only be used for 2-D convolution \(the bottom has 3 spatial axes\)"),
    ("Im2col", "kernel_size: 2 pad_h: 1", (1, 1, 4),
     r"pad_h and pad_w can only be used for 2-D convolution \(the bottom has 1 spatial axes\)"),
    ("Deconvolution", "kernel_size: 2 stride_w: 2", (1, 1, 4, 4, 4), "stride_h and stride_w can only be used for 2-D"),
    ("Convolution", "kernel_size: 2 kernel_size: 3", (1, 1, 4, 4, 4),
     r"kernel_size must be given once, or once per spatial axis \(kernel_size given 2 times; 3 spatial axes\)"),
    ("Convolution", "kernel_size: 2 stride: 1 stride: 2", (1, 1, 4), r"stride given 2 times; 1 spatial axes"),
    ("Deconvolution", "kernel_size: 2 dilation: 1 dilation: 1 dilation: 1", (1, 1, 4, 4),
     r"dilation given 3 times; 2 spatial axes"),
    ("Convolution", "stride: 1", (1, 1, 4, 4, 4), r"kernel_size given 0 times; 3 spatial axes"),
    ("Convolution", "kernel_h: 3", (1, 1, 4, 4), "for non-square kernels both kernel_h and kernel_w are required"),
    ("Convolution", "kernel_size: 3 stride_h: 2", (1, 1, 4, 4), "both stride_h and stride_w are required"),
    ("Convolution", "kernel_size: 3 hole: 2", (1, 1, 9, 9, 9), r"hole \(the DeepLab fork's dilation\) is 2-D only"),
    ("Im2col", "kernel_size: 3 axis: 3", (1, 1, 4, 4), "needs at least one spatial axis after the channel axis 3"),
    ("Convolution", "kernel_size: 3 axis: 4", (1, 1, 4, 4), r"convolution_param axis 4 out of range for a 4-D blob"),
    ("Convolution", "kernel_size: 3 kernel_size: 3 kernel_size: 5", (1, 1, 4, 4, 4),
     r"input 4x4x4 is smaller than the dilated kernel; output would be 2x2x0"),
    ("Deconvolution", "kernel_size: 2 pad: 2", (1, 1, 2), r"output would be -1: pad is too large"),
    ("Convolution", "kernel_size: 0", (1, 1, 4), "kernel, stride and dilation must be positive"),
])
def test_invalid_combinations_are_refused(kind, spec, shape, message):
    out = "" if kind == "Im2col" else "num_output: 1 "
    with pytest.raises(CaffeError, match=rf"layer 'c' \({kind}\): .*{message}"):
        layer(f'name: "c" type: "{kind}" bottom: "x" top: "y" convolution_param {{ {out}{spec} }}', shape)
