"""CRF layers: the DeepLab fork's DenseCRF and crfasrnn's MultiStageMeanfield, against hand and
brute-force computations, densecrf's own stage, gradient checks, nets and caffemodels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
import densecrf
from caffe import CaffeError
from caffe.layer import make_layer
from caffe.proto import caffe_pb2
from densecrf.lattice import PermutohedralLattice


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny inputs (tests/conftest.py)


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def dense_crf(params, n=1, c=3, h=5, w=6, image=True, phase="TEST"):
    bottoms = 'bottom: "s" bottom: "d"' + (' bottom: "im"' if image else "")
    shapes = [(n, c, h, w), (n, 1, 1, 2)] + ([(n, 3, h, w)] if image else [])
    return layer(f'name: "crf" type: "DenseCRF" {bottoms} top: "p" dense_crf_param {{ {params} }}',
                 *shapes, phase=phase)


def msmf(params, n=1, c=3, h=5, w=6, phase="TEST"):
    return layer('name: "inference1" type: "MultiStageMeanfield" bottom: "u" bottom: "q" bottom: "im" top: "p" '
                 f'multi_stage_meanfield_param {{ {params} }}', *[(n, c, h, w)] * 2, (n, 3, h, w), phase=phase)


def dims(*sizes):
    return torch.tensor(sizes, dtype=torch.float32).reshape(len(sizes), 1, 1, 2)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def fork_dense_crf(scores, data_dim, image, pos, bi, iters, output_prob=True):
    """The fork's DenseCRFLayer::Forward_cpu step by step (densecrf_layer.cpp), with the lattice's
    filter as its Permutohedral::compute; each image's own pixels for the bilateral features."""
    n, c, ph, pw = scores.shape
    top = np.zeros(scores.shape, np.float64)
    for b in range(n):
        real_h, real_w = (int(v) for v in np.ravel(data_dim[b])[:2])
        hh, ww = (ph, pw) if ph <= real_h and pw <= real_w else (real_h, real_w)
        unary = np.array([[-scores[b, k, j, i] for k in range(c)] for j in range(hh) for i in range(ww)])
        pots = []
        for w_k, std in pos:
            f = [[i / std, j / std] for j in range(hh) for i in range(ww)]
            pots.append((w_k, f))
        for w_k, xy, rgb in bi if image is not None else []:
            f = [[i / xy, j / xy] + [image[b, ch, j, i] / rgb for ch in range(3)] for j in range(hh) for i in range(ww)]
            pots.append((w_k, f))
        pots = [(w_k, PermutohedralLattice(torch.tensor(f, dtype=torch.float32))) for w_k, f in pots]
        norms = [1.0 / (lat.filter(torch.ones(hh * ww, 1)).numpy().astype(np.float64) + 1e-20) for _, lat in pots]
        cur = softmax(-unary, 1)
        for _ in range(iters):
            nxt = -unary.copy()
            for (w_k, lat), norm in zip(pots, norms):
                nxt += w_k * norm * lat.filter(torch.tensor(cur, dtype=torch.float32)).numpy()
            cur = softmax(nxt, 1)
        out = cur if output_prob else np.log(np.maximum(cur, np.finfo(np.float32).tiny))
        for j in range(hh):
            for i in range(ww):
                top[b, :, j, i] = out[j * ww + i]
    return top


# ---------------------------------------------------------------- DenseCRF


def test_dense_crf_no_iterations_is_softmax_of_raw_scores_inside_the_region():
    """max_iter 0: the marginals are softmax(scores), no -log softmax of the unary; 0 outside."""
    crf = dense_crf("max_iter: 0 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 5 bi_rgb_std: 3", n=2)
    s = torch.tensor([[0.0, 1.0, 2.0]]).t().reshape(1, 3, 1, 1).expand(2, 3, 5, 6).contiguous()
    y = crf(s, dims((5, 6), (3, 4)), torch.zeros(2, 3, 5, 6))[0]
    e = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()   # 0.0900, 0.2447, 0.6652
    np.testing.assert_allclose(y[0].permute(1, 2, 0).reshape(-1, 3).numpy(), np.tile(e, (30, 1)), rtol=1e-6)
    np.testing.assert_allclose(y[1, :, :3, :4].permute(1, 2, 0).reshape(-1, 3).numpy(), np.tile(e, (12, 1)), rtol=1e-6)
    assert not y[1, :, 3:].any() and not y[1, :, :, 4:].any()


def test_dense_crf_isolated_pixels_by_hand():
    """Kernels far narrower than a pixel: each normalised message is the pixel's own Q, so each
    iteration is Q <- softmax(s + (w_pos + w_bi) Q), computed here by hand."""
    crf = dense_crf("max_iter: 3 pos_w: 2 pos_xy_std: 0.01 bi_w: 0.5 bi_xy_std: 0.01 bi_rgb_std: 1", h=2, w=3)
    s = torch.randn(1, 3, 2, 3, generator=torch.Generator().manual_seed(0))
    y = crf(s, dims((2, 3)), torch.rand(1, 3, 2, 3) * 255)[0]
    q = softmax(s.numpy().astype(np.float64), 1)
    for _ in range(3):
        q = softmax(s.numpy() + 2.5 * q, 1)
    np.testing.assert_allclose(y.numpy(), q, rtol=1e-5)


def test_dense_crf_matches_the_forks_forward_step_by_step():
    """Two images, one cropped by data_dim, two positional kernels, BGR-minus-mean image."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 5, 6, generator=g) * 2
    im = torch.rand(2, 3, 5, 6, generator=g) * 255 - 110
    d = dims((5, 6), (4, 3))
    params = ("max_iter: 4 pos_w: 3 pos_xy_std: 3 pos_w: 1 pos_xy_std: 1.5 "
              "bi_w: 4 bi_xy_std: 5 bi_rgb_std: 30")
    pos, bi = [(3, 3), (1, 1.5)], [(4, 5, 30)]
    y = dense_crf(params, n=2)(s, d, im)[0]
    np.testing.assert_allclose(y.numpy(), fork_dense_crf(s.numpy(), d.numpy(), im.numpy(), pos, bi, 4), atol=2e-6)
    logy = dense_crf(params + " output_probability: false", n=2)(s, d, im)[0]
    expected = fork_dense_crf(s.numpy(), d.numpy(), im.numpy(), pos, bi, 4, output_prob=False)
    np.testing.assert_allclose(logy.numpy(), expected, atol=2e-5)
    assert not logy[1, :, 4:].any()   # the fork writes 0 outside the region, log output too


def test_dense_crf_region_rule():
    """The whole blob when the image is at least as large (a crop); else the real size, per axis."""
    crf = dense_crf("pos_w: 3 pos_xy_std: 3", n=3, image=False)
    d = dims((9, 9), (5, 4), (7, 2))
    assert crf.regions(torch.zeros(3, 3, 5, 6), d) == [(5, 6), (5, 4), (5, 2)]


def test_dense_crf_without_image_uses_positional_kernels_only():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 4, 5, 6, generator=g)
    crf = dense_crf("max_iter: 5 pos_w: 3 pos_xy_std: 2 bi_w: 4 bi_xy_std: 5 bi_rgb_std: 3", c=4, image=False)
    y = crf(s, dims((5, 6)))[0]
    np.testing.assert_allclose(y.numpy(), fork_dense_crf(s.numpy(), [[5, 6]], None, [(3, 2)], [], 5), atol=2e-6)


def test_dense_crf_same_labels_as_the_densecrf_stage():
    """Same parameters -> same labels as densecrf.refine (its unary -log softmax(scores) differs
    from -scores by a per-pixel constant). The stage reads RGB, the layer reads the blob's
    channel order: given the same channels the marginals agree to float rounding, and the
    data layer's BGR-minus-mean image gives the same labels on all but a few pixels."""
    from deeplab.data.synthetic import render
    image, label = render(7, 0, 48)
    image, label = np.ascontiguousarray(image[:40]), label[:40] % 4
    h, w = label.shape
    rng = np.random.default_rng(0)
    scores = (np.stack([(label == k) * 2.0 for k in range(4)]) + rng.normal(0, 1.2, (4, h, w))).astype(np.float32)
    params = densecrf.CRFParams(iters=5, bi_w=4, bi_xy_std=20, bi_rgb_std=5, pos_w=3, pos_xy_std=3)
    labels, prob = densecrf.refine(image, scores, params, return_prob=True, backend="torch")
    crf = dense_crf("max_iter: 5 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 20 bi_rgb_std: 5", c=4, h=h, w=w)
    rgb = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    y = crf(torch.from_numpy(scores)[None], dims((h, w)), rgb)[0][0]
    np.testing.assert_allclose(y.numpy(), prob, atol=1e-5)
    assert np.array_equal(y.argmax(0).numpy(), labels)
    bgr = rgb.flip(1) - torch.tensor([104.008, 116.669, 122.675]).reshape(1, 3, 1, 1)
    y2 = crf(torch.from_numpy(scores)[None], dims((h, w)), bgr)[0][0]
    assert (y2.argmax(0).numpy() == labels).mean() > 0.99


def test_dense_crf_gradient_reaches_the_scores_only():
    crf = dense_crf("max_iter: 2 pos_w: 3 pos_xy_std: 1 bi_w: 4 bi_xy_std: 2 bi_rgb_std: 20", h=3, w=4)
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    im = (torch.rand(1, 3, 3, 4, generator=g, dtype=torch.float64) * 100).requires_grad_()
    d = dims((3, 4)).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: crf(x, d, im)[0], (s,))
    out = crf(s, d, im)[0]
    (out * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum().backward()
    assert s.grad.abs().sum() > 0 and im.grad is None and d.grad is None
    assert [crf.allow_force_backward(i) for i in range(3)] == [True, False, False]
    log_crf = dense_crf("max_iter: 2 pos_w: 3 pos_xy_std: 1 output_probability: false", h=3, w=4, image=False)
    assert torch.autograd.gradcheck(lambda x: log_crf(x, d)[0], (s,))


@pytest.mark.parametrize("params,shapes,message", [
    ("pos_w: 3", None, "pos_w and pos_xy_std should have the same size"),
    ("bi_w: 3 bi_xy_std: 2", None, "bi_w and bi_rgb_std should have the same size"),
    ("bi_w: 3 bi_rgb_std: 2", None, "bi_w and bi_xy_std should have the same size"),
    ("pos_w: 3 pos_xy_std: 0", None, "pos_xy_std and bi_xy_std must be > 0"),
    ("pos_w: 3 pos_xy_std: 3", None, "has image as input, but no bilateral parameters"),
    ("bi_w: 3 bi_xy_std: 2 bi_rgb_std: 2", [(1, 3, 5, 6), (1, 1, 1, 2), (1, 1, 5, 6)], "Can Only support color"),
    ("bi_w: 3 bi_xy_std: 2 bi_rgb_std: 2", [(1, 3, 5, 6), (1, 1, 1, 2), (1, 3, 4, 6)], "same height as image"),
    ("bi_w: 3 bi_xy_std: 2 bi_rgb_std: 2", [(2, 3, 5, 6), (1, 1, 1, 2), (2, 3, 5, 6)], "should have the same number"),
    ("bi_w: 3 bi_xy_std: 2 bi_rgb_std: 2", [(1, 3, 5, 6), (1, 1, 1, 1), (1, 3, 5, 6)], "height and width per image"),
])
def test_dense_crf_refuses_what_the_fork_checks(params, shapes, message):
    shapes = shapes or [(1, 3, 5, 6), (1, 1, 1, 2), (1, 3, 5, 6)]
    with pytest.raises(CaffeError, match=message):
        layer(f'name: "crf" type: "DenseCRF" bottom: "s" bottom: "d" bottom: "im" top: "p" '
              f'dense_crf_param {{ {params} }}', *shapes)
    with pytest.raises(CaffeError, match="at least 2 bottom"):
        layer('name: "crf" type: "DenseCRF" bottom: "s" top: "p"', (1, 3, 5, 6))
    with pytest.raises(CaffeError, match="at most three"):
        layer('name: "crf" type: "DenseCRF" bottom: "s" bottom: "d" bottom: "i" bottom: "j" top: "p"',
              *shapes, shapes[0])


V1_NET = """name: "crf" force_backward: true
input: "scores" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 6
input: "data_dim" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 2
input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 6
layers { name: "crf" type: DENSE_CRF bottom: "scores" bottom: "data_dim" bottom: "data" top: "crf"
  dense_crf_param { max_iter: 3 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 5 bi_rgb_std: 10 } }
"""


def test_v1_dense_crf_in_a_net_backward_leaves_data_dim_and_image_alone(tmp_path):
    path = tmp_path / "crf.prototxt"
    path.write_text(V1_NET)
    net = caffe.Net(str(path), caffe.TEST)
    assert net.layers[-1].type == "DenseCRF" and net.blobs["crf"].data.shape == (1, 3, 5, 6)
    rng = np.random.default_rng(4)
    s, im = rng.normal(size=(1, 3, 5, 6)), rng.uniform(-100, 100, (1, 3, 5, 6))
    out = net.forward(scores=s, data_dim=np.array([5.0, 6.0]).reshape(1, 1, 1, 2), data=im)["crf"]
    expected = fork_dense_crf(s.astype(np.float32), [[5, 6]], im.astype(np.float32), [(3, 3)], [(4, 5, 10)], 3)
    np.testing.assert_allclose(out, expected, atol=2e-6)
    diffs = net.backward(crf=rng.normal(size=(1, 3, 5, 6)))
    assert np.abs(diffs["scores"]).sum() > 0
    assert not net.blobs["data_dim"].diff.any() and not net.blobs["data"].diff.any()


# ---------------------------------------------------------------- MultiStageMeanfield

MSMF = "num_iterations: 3 theta_alpha: 4 theta_beta: 30 theta_gamma: 2 "


def test_msmf_blobs_in_crfasrnns_order_and_shapes():
    m = msmf(MSMF + "compatibility_mode: POTTS threshold: 2 spatial_filter_weight: 3 bilateral_filter_weight: 5", c=4)
    assert [tuple(b.shape) for b in m.blobs] == [(1, 1, 4, 4)] * 3
    assert torch.equal(m.blobs[0][0, 0], 3 * torch.eye(4)) and torch.equal(m.blobs[1][0, 0], 5 * torch.eye(4))
    assert torch.equal(m.blobs[2][0, 0], -torch.eye(4))
    m = msmf(MSMF + 'spatial_filter_weights_str: "1 2 3 4 9" bilateral_filter_weights_str: "5 5 5 6"', c=4)
    assert m.blobs[0][0, 0].diagonal().tolist() == [1, 2, 3, 4] and m.blobs[1][0, 0].diagonal().tolist() == [5, 5, 5, 6]
    assert torch.count_nonzero(m.blobs[0]) == 4
    m = msmf(MSMF, c=2)   # weights default to 1
    assert torch.equal(m.blobs[0][0, 0], torch.eye(2)) and torch.equal(m.blobs[1][0, 0], torch.eye(2))


@pytest.mark.parametrize("params,message", [
    ("num_iterations: 1 theta_alpha: 1 theta_beta: 1 theta_gamma: 1", "must be greater than 1"),
    ("num_iterations: 3 theta_alpha: 1 theta_gamma: 1", "lacks theta_beta"),
    ("theta_alpha: 1 theta_beta: 1 theta_gamma: 1", "lacks num_iterations"),
    (MSMF + 'spatial_filter_weights_str: "3 3"', "couldn't read 3 values"),
    ("num_iterations: 3 theta_alpha: 0 theta_beta: 1 theta_gamma: 1", "must be > 0"),
])
def test_msmf_refuses_what_crfasrnn_refuses(params, message):
    with pytest.raises(CaffeError, match=message):
        msmf(params)


def test_msmf_without_its_parameter_block_has_one_iteration_and_is_refused():
    with pytest.raises(CaffeError, match="greater than 1"):
        layer('name: "m" type: "MultiStageMeanfield" bottom: "u" bottom: "q" bottom: "im" top: "p"',
              (1, 3, 4, 4), (1, 3, 4, 4), (1, 3, 4, 4))
    with pytest.raises(CaffeError, match="3 channels"):
        layer('name: "m" type: "MultiStageMeanfield" bottom: "u" bottom: "q" bottom: "im" top: "p" '
              f'multi_stage_meanfield_param {{ {MSMF} }}', (1, 3, 4, 4), (1, 3, 4, 4), (1, 1, 4, 4))


def test_msmf_isolated_pixels_by_hand():
    """Narrow kernels: each normalised message is the pixel's own P; with general Ws, Wb, mu each
    iteration is X <- U - mu (Ws + Wb) softmax(X) per pixel, from X = Q0 (meanfield_iteration.cpp)."""
    m = msmf("num_iterations: 4 theta_alpha: 0.01 theta_beta: 1 theta_gamma: 0.01", n=2, h=2, w=3)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for b in m.blobs:
            b.copy_(torch.randn(b.shape, generator=g) * 0.7)
    u, q0 = torch.randn(2, 3, 2, 3, generator=g), torch.randn(2, 3, 2, 3, generator=g)
    y = m(u, q0, torch.rand(2, 3, 2, 3, generator=g) * 255)[0]
    ws, wb, mu = (b[0, 0].detach().numpy().astype(np.float64) for b in m.blobs)
    x = q0.numpy().astype(np.float64)
    for _ in range(4):
        p = softmax(x, 1)
        x = u.numpy() - np.einsum("ab,bc,ncij->naij", mu, ws + wb, p)
    np.testing.assert_allclose(y.detach().numpy(), x, atol=1e-5)


def test_msmf_with_potts_init_is_dense_crf_before_the_last_softmax():
    g = torch.Generator().manual_seed(6)
    s = torch.randn(2, 3, 5, 6, generator=g) * 2
    im = torch.rand(2, 3, 5, 6, generator=g) * 255 - 110
    m = msmf("num_iterations: 4 theta_alpha: 5 theta_beta: 30 theta_gamma: 3 "
             "spatial_filter_weight: 3 bilateral_filter_weight: 4", n=2)
    crf = dense_crf("max_iter: 4 pos_w: 3 pos_xy_std: 3 bi_w: 4 bi_xy_std: 5 bi_rgb_std: 30", n=2)
    x = m(s, s, im)[0]
    np.testing.assert_allclose(torch.softmax(x, 1).detach().numpy(), crf(s, dims((5, 6), (5, 6)), im)[0].numpy(),
                               atol=2e-6)


def test_msmf_gradcheck_unaries_softmax_input_and_blobs():
    m = msmf("num_iterations: 2 theta_alpha: 2 theta_beta: 40 theta_gamma: 1", h=3, w=4).double()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for b in m.blobs:
            b.add_(torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.3)
    u, q0 = (torch.randn(1, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    im = torch.rand(1, 3, 3, 4, generator=g, dtype=torch.float64) * 255
    blobs = [b.detach().clone().requires_grad_() for b in m.blobs]

    def f(u, q0, ws, wb, mu):
        return torch.func.functional_call(m, {"blobs.0": ws, "blobs.1": wb, "blobs.2": mu}, (u, q0, im))[0]

    assert torch.autograd.gradcheck(f, (u, q0, *blobs))
    assert [m.allow_force_backward(i) for i in range(3)] == [True, True, False]


CRFRNN_TAIL = """name: "crfrnn-tail" force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 7 } } }
layer { name: "score" type: "Convolution" bottom: "data" top: "coarse"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.02 } } }
layer { type: 'Split' name: 'splitting' bottom: 'coarse' top: 'unary' top: 'Q0' }
layer { name: "inference1" type: "MultiStageMeanfield" bottom: "unary" bottom: "Q0" bottom: "data" top: "pred"
  param { lr_mult: 10000 } param { lr_mult: 10000 } param { lr_mult: 1000 }
  multi_stage_meanfield_param { num_iterations: 3 compatibility_mode: POTTS threshold: 2 theta_alpha: 160
    theta_beta: 3 theta_gamma: 3 spatial_filter_weight: 3 bilateral_filter_weight: 5 } }
"""


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def crfasrnn_caffemodel(path, blobs):
    """A caffemodel as crfasrnn's release Caffe writes it: its multi_stage_meanfield_param under
    field 146 (BVLC's recurrent_param) and three 1 x 1 x C x C blobs."""
    lp = caffe_pb2.LayerParameter(name="inference1", type="MultiStageMeanfield", bottom=["unary", "Q0", "data"],
                                  top=["pred"])
    for b in blobs:
        lp.blobs.add(shape=caffe_pb2.BlobShape(dim=b.shape), data=b.ravel().tolist())
    p = text_format.Parse("num_iterations: 10 theta_alpha: 160 theta_beta: 3 theta_gamma: 3 threshold: 2 "
                          "spatial_filter_weight: 3 bilateral_filter_weight: 5",
                          caffe_pb2.MultiStageMeanfieldParameter())
    layer_bytes = lp.SerializeToString() + _field(146, p.SerializeToString())
    path.write_bytes(caffe_pb2.NetParameter(name="CRFRNN-VOC").SerializeToString() + _field(100, layer_bytes))
    parsed = caffe_pb2.NetParameter.FromString(path.read_bytes())   # the 146 bytes parse (as recurrent_param)
    assert parsed.layer[0].name == "inference1" and len(parsed.layer[0].blobs) == 3


def test_crfrnn_tail_trains_and_loads_crfasrnn_blobs(tmp_path):
    path = tmp_path / "tail.prototxt"
    path.write_text(CRFRNN_TAIL)
    net = caffe.Net(str(path), caffe.TRAIN)
    assert [tuple(b.data.shape) for b in net.params["inference1"]] == [(1, 1, 3, 3)] * 3
    rng = np.random.default_rng(8)
    net.forward(data=rng.uniform(-100, 100, (1, 3, 6, 7)))
    assert net.blobs["pred"].data.shape == (1, 3, 6, 7)
    net.backward(pred=rng.normal(size=(1, 3, 6, 7)))
    assert all(np.abs(b.diff).sum() > 0 for b in net.params["inference1"])
    assert np.abs(net.params["score"][0].diff).sum() > 0

    blobs = [rng.normal(size=(1, 1, 3, 3)).astype(np.float32) for _ in range(3)]
    crfasrnn_caffemodel(tmp_path / "crfrnn.caffemodel", blobs)
    net.copy_from(str(tmp_path / "crfrnn.caffemodel"))
    for ours, theirs in zip(net.params["inference1"], blobs):
        np.testing.assert_array_equal(ours.data, theirs)
    net.save(str(tmp_path / "ours.caffemodel"))
    again = caffe.Net(str(path), caffe.TEST, weights=str(tmp_path / "ours.caffemodel"))
    for ours, theirs in zip(again.params["inference1"], blobs):
        np.testing.assert_array_equal(ours.data, theirs)
