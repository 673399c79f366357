"""RNN, LSTM and LSTMUnit against explicit loops written from BVLC's C++ (rnn_layer.cpp,
lstm_layer.cpp, lstm_unit_layer.cpp, recurrent_layer.cpp), hand-computed numbers, gradcheck,
and nets built from prototxt (param shapes, caffemodel round trip)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

import caffe
from caffe import CaffeError
from caffe.layer import make_layer
from caffe.model_io import load_caffemodel
from caffe.net import Net
from caffe.proto import caffe_pb2

RNG = np.random.default_rng(7)


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def recurrent(kind, num_output, *bottom_shapes, extra="", tops=("y",), bottoms=("x", "cont")):
    text = (f'name: "r" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops)
            + f" recurrent_param {{ num_output: {num_output} {extra} }}")
    lay = layer(text, *bottom_shapes).double()
    with torch.no_grad():
        for b in lay.blobs:   # fixed random weights, large enough that every term matters
            b.copy_(torch.from_numpy(RNG.uniform(-0.8, 0.8, tuple(b.shape))))
    return lay


def blobs(lay):
    return [b.detach().numpy().copy() for b in lay.blobs]


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


# ------------------------------------------------------------- references from the C++
def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def caffe_tanh(v):   # lstm_unit_layer.cpp's tanh
    return 2.0 * sigmoid(2.0 * v) - 1.0


def inner(w, v, b=None):
    """InnerProduct on one vector, loop by loop."""
    out = np.zeros(w.shape[0])
    for r in range(w.shape[0]):
        out[r] = sum(w[r, k] * v[k] for k in range(w.shape[1])) + (0.0 if b is None else b[r])
    return out


def ref_rnn(x, cont, w, h0=None, x_static=None):
    """rnn_layer.cpp's unrolled net: h_conted = cont_t h_{t-1}; h_t = tanh(W_hh h_conted +
    (W_xh x_t + b_h) [+ W_xh_static x_static]); o_t = tanh(W_ho h_t + b_o)."""
    if x_static is None:
        w_xh, b_h, w_hh, w_ho, b_o = w
    else:
        w_xh, b_h, w_s, w_hh, w_ho, b_o = w
    T, N = cont.shape
    D = b_h.shape[0]
    h = np.zeros((N, D)) if h0 is None else np.array(h0, dtype=np.float64).reshape(N, D)
    o = np.zeros((T, N, D))
    for t in range(T):
        new = np.zeros((N, D))
        for n in range(N):
            conted = h[n] * cont[t, n]
            s = inner(w_hh, conted) + inner(w_xh, x[t, n].ravel(), b_h)
            if x_static is not None:
                s = s + inner(w_s, x_static[n].ravel())
            new[n] = [math.tanh(v) for v in s]
            o[t, n] = [math.tanh(v) for v in inner(w_ho, new[n], b_o)]
        h = new
    return o, h


def ref_unit(c_prev, gates, cont):
    """LSTMUnitLayer::Forward_cpu for one instance."""
    D = c_prev.shape[0]
    c, h = np.zeros(D), np.zeros(D)
    for d in range(D):
        i = sigmoid(gates[d])
        f = 0.0 if cont == 0 else cont * sigmoid(gates[D + d])
        o = sigmoid(gates[2 * D + d])
        g = caffe_tanh(gates[3 * D + d])
        c[d] = f * c_prev[d] + i * g
        h[d] = o * caffe_tanh(c[d])
    return c, h


def ref_unit_backward(c_prev, gates, cont, c, c_diff, h_diff):
    """LSTMUnitLayer::Backward_cpu for one instance: (c_prev diff, gates diff)."""
    D = c_prev.shape[0]
    cp_diff, x_diff = np.zeros(D), np.zeros(4 * D)
    for d in range(D):
        i = sigmoid(gates[d])
        f = 0.0 if cont == 0 else cont * sigmoid(gates[D + d])
        o = sigmoid(gates[2 * D + d])
        g = caffe_tanh(gates[3 * D + d])
        tanh_c = caffe_tanh(c[d])
        c_term = c_diff[d] + h_diff[d] * o * (1 - tanh_c * tanh_c)
        cp_diff[d] = c_term * f
        x_diff[d] = c_term * g * i * (1 - i)
        x_diff[D + d] = c_term * c_prev[d] * f * (1 - f)
        x_diff[2 * D + d] = h_diff[d] * tanh_c * o * (1 - o)
        x_diff[3 * D + d] = c_term * i * (1 - g * g)
    return cp_diff, x_diff


def ref_lstm(x, cont, w, h0=None, c0=None, x_static=None):
    """lstm_layer.cpp's unrolled net: gate_input_t = W_hc (cont_t h_{t-1}) + (W_xc x_t + b_c)
    [+ W_xc_static x_static], then LSTMUnit(c_{t-1}, gate_input_t, cont_t)."""
    if x_static is None:
        w_xc, b_c, w_hc = w
    else:
        w_xc, b_c, w_s, w_hc = w
    T, N = cont.shape
    D = w_hc.shape[1]
    h = np.zeros((N, D)) if h0 is None else np.array(h0, dtype=np.float64).reshape(N, D)
    c = np.zeros((N, D)) if c0 is None else np.array(c0, dtype=np.float64).reshape(N, D)
    out = np.zeros((T, N, D))
    for t in range(T):
        new_h, new_c = np.zeros((N, D)), np.zeros((N, D))
        for n in range(N):
            gates = inner(w_hc, h[n] * cont[t, n]) + inner(w_xc, x[t, n].ravel(), b_c)
            if x_static is not None:
                gates = gates + inner(w_s, x_static[n].ravel())
            new_c[n], new_h[n] = ref_unit(c[n], gates, cont[t, n])
            out[t, n] = new_h[n]
        h, c = new_h, new_c
    return out, h, c


CONT = np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float64)   # stream 0 restarts at t=2, stream 1 at t=1


# ------------------------------------------------------------- RNN
def test_rnn_hand_computed_one_unit():
    lay = recurrent("RNN", 1, (3, 1, 1), (3, 1))
    with torch.no_grad():
        for b, v in zip(lay.blobs, (1.0, 0.0, 2.0, 1.0, 0.0)):   # W_xh, b_h, W_hh, W_ho, b_o
            b.fill_(v)
    x, cont = t64([[[0.5]], [[0.0]], [[0.0]]]), t64([[0], [1], [0]])
    (o,) = lay(x, cont)
    h1 = math.tanh(0.5)
    h2 = math.tanh(2 * h1)      # continues: W_hh h1, no input
    h3 = 0.0                    # cont 0 drops h2; no input
    assert o.flatten().tolist() == pytest.approx([math.tanh(h1), math.tanh(h2), math.tanh(h3)], abs=1e-15)


def test_rnn_forward_matches_the_unrolled_net_with_resets():
    lay = recurrent("RNN", 3, (3, 2, 2, 2), (3, 2))
    assert [tuple(b.shape) for b in lay.blobs] == [(3, 4), (3,), (3, 3), (3, 3), (3,)]
    assert lay.top_shapes == [(3, 2, 3)]
    x = RNG.normal(size=(3, 2, 2, 2))
    (o,) = lay(t64(x), t64(CONT))
    expected, _ = ref_rnn(x, CONT, blobs(lay))
    np.testing.assert_allclose(o.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_rnn_state_carries_over_between_forward_passes():
    lay = recurrent("RNN", 3, (3, 2, 4), (3, 2))
    x1, x2 = RNG.normal(size=(3, 2, 4)), RNG.normal(size=(3, 2, 4))
    lay(t64(x1), t64(CONT))
    _, h_T = ref_rnn(x1, CONT, blobs(lay))
    ones = np.ones((3, 2))
    (o2,) = lay(t64(x2), t64(ones))     # h_0 of this pass = h_T of the last (recurrent_layer.cpp)
    expected, _ = ref_rnn(x2, ones, blobs(lay), h0=h_T)
    np.testing.assert_allclose(o2.detach().numpy(), expected, rtol=0, atol=1e-12)
    fresh, _ = ref_rnn(x2, ones, blobs(lay))
    assert np.abs(expected - fresh).max() > 1e-3   # the carried state matters here
    meta = copy.deepcopy(lay).to("meta")            # a shape-only pass keeps the state
    with torch.no_grad():
        meta(torch.empty(3, 2, 4, device="meta", dtype=torch.float64), torch.empty(3, 2, device="meta"))
    assert [c.device.type for c in meta._carry] == ["cpu"]
    lay.reset()                                     # Caffe's Reset: state zero
    np.testing.assert_allclose(lay(t64(x2), t64(ones))[0].detach().numpy(), fresh, rtol=0, atol=1e-12)


def test_rnn_x_static():
    lay = recurrent("RNN", 2, (3, 2, 3), (3, 2), (2, 5), bottoms=("x", "cont", "xs"))
    assert [tuple(b.shape) for b in lay.blobs] == [(2, 3), (2,), (2, 5), (2, 2), (2, 2), (2,)]
    x, xs = RNG.normal(size=(3, 2, 3)), RNG.normal(size=(2, 5))
    (o,) = lay(t64(x), t64(CONT), t64(xs))
    expected, _ = ref_rnn(x, CONT, blobs(lay), x_static=xs)
    np.testing.assert_allclose(o.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_rnn_expose_hidden_takes_h0_gives_h_T_and_keeps_no_state():
    lay = recurrent("RNN", 3, (3, 2, 4), (3, 2), (1, 2, 3), extra="expose_hidden: true",
                    bottoms=("x", "cont", "h0"), tops=("y", "hT"))
    assert lay.top_shapes == [(3, 2, 3), (1, 2, 3)]
    x, h0 = RNG.normal(size=(3, 2, 4)), RNG.normal(size=(1, 2, 3))
    cont = np.ones((3, 2))
    cont[1, 1] = 0
    for _ in range(2):   # the same result twice: the exposed h_0 replaces the carried state
        o, h_T = lay(t64(x), t64(cont), t64(h0))
        expected, exp_h = ref_rnn(x, cont, blobs(lay), h0=h0)
        np.testing.assert_allclose(o.detach().numpy(), expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(h_T.detach().numpy(), exp_h[None], rtol=0, atol=1e-12)


# ------------------------------------------------------------- LSTM
def test_lstm_forward_matches_the_unrolled_net_with_resets():
    lay = recurrent("LSTM", 3, (3, 2, 2, 2), (3, 2))
    assert [tuple(b.shape) for b in lay.blobs] == [(12, 4), (12,), (12, 3)]   # W_xc, b_c, W_hc
    x = RNG.normal(size=(3, 2, 2, 2))
    (h,) = lay(t64(x), t64(CONT))
    expected, _, _ = ref_lstm(x, CONT, blobs(lay))
    np.testing.assert_allclose(h.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_lstm_x_static_blob_order_and_forward():
    lay = recurrent("LSTM", 2, (3, 2, 3), (3, 2), (2, 5), bottoms=("x", "cont", "xs"))
    # the unrolled net's params: x_transform (W_xc, b_c), W_xc_x_static (W_xc_static), transform_1 (W_hc)
    assert [tuple(b.shape) for b in lay.blobs] == [(8, 3), (8,), (8, 5), (8, 2)]
    x, xs = RNG.normal(size=(3, 2, 3)), RNG.normal(size=(2, 5))
    (h,) = lay(t64(x), t64(CONT), t64(xs))
    expected, _, _ = ref_lstm(x, CONT, blobs(lay), x_static=xs)
    np.testing.assert_allclose(h.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_lstm_expose_hidden_in_and_out():
    lay = recurrent("LSTM", 3, (3, 2, 4), (3, 2), (2, 2), (1, 2, 3), (1, 2, 3),
                    extra="expose_hidden: true", bottoms=("x", "cont", "xs", "h0", "c0"),
                    tops=("y", "hT", "cT"))
    assert len(lay.blobs) == 4 and lay.top_shapes == [(3, 2, 3), (1, 2, 3), (1, 2, 3)]
    x, h0, c0, xs = (RNG.normal(size=s) for s in ((3, 2, 4), (1, 2, 3), (1, 2, 3), (2, 2)))
    cont = np.ones((3, 2))
    cont[2, 0] = 0
    h, h_T, c_T = lay(t64(x), t64(cont), t64(xs), t64(h0), t64(c0))
    expected, exp_h, exp_c = ref_lstm(x, cont, blobs(lay), h0=h0, c0=c0, x_static=xs)
    np.testing.assert_allclose(h.detach().numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_T.detach().numpy(), exp_h[None], rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_T.detach().numpy(), exp_c[None], rtol=0, atol=1e-12)


def test_exposed_states_share_data_only_no_gradient_through_them():
    # RecurrentLayer::Reshape/Forward share only data with h_0, c_0, h_T, c_T (no ShareDiff)
    lay = recurrent("LSTM", 2, (2, 1, 3), (2, 1), (1, 1, 2), (1, 1, 2), extra="expose_hidden: true",
                    bottoms=("x", "cont", "h0", "c0"), tops=("y", "hT", "cT"))
    h0 = t64(RNG.normal(size=(1, 1, 2))).requires_grad_(True)
    c0 = t64(RNG.normal(size=(1, 1, 2))).requires_grad_(True)
    x = t64(RNG.normal(size=(2, 1, 3))).requires_grad_(True)
    h, h_T, c_T = lay(x, t64(np.ones((2, 1))), h0, c0)
    assert not h_T.requires_grad and not c_T.requires_grad
    h.sum().backward()
    assert h0.grad is None and c0.grad is None and x.grad.abs().sum() > 0


def test_lstm_one_timestep_at_a_time_equals_the_full_sequence():
    # BVLC's LSTMLayerTest.TestForward: T=3 in one pass == three T=1 passes (state carried);
    # with cont 0 everywhere only the first timestep agrees.
    full = recurrent("LSTM", 4, (3, 3, 3, 2), (3, 3))
    step = recurrent("LSTM", 4, (1, 3, 3, 2), (1, 3))
    with torch.no_grad():
        for a, b in zip(step.blobs, full.blobs):
            a.copy_(b)
    x = RNG.normal(size=(3, 3, 3, 2))
    cont = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=np.float64)
    whole = full(t64(x), t64(cont))[0].detach().numpy()
    for t in range(3):
        one = step(t64(x[t:t + 1]), t64(cont[t:t + 1]))[0].detach().numpy()
        np.testing.assert_allclose(one, whole[t:t + 1], rtol=0, atol=1e-12)
    step.reset()
    for t in range(3):
        one = step(t64(x[t:t + 1]), t64(np.zeros((1, 3))))[0].detach().numpy()
        assert np.allclose(one, whole[t:t + 1]) == (t == 0)
    with pytest.raises(CaffeError, match=r"layer 'r' \(LSTM\): input number of timesteps changed: 3, set up with 1"):
        step(t64(x), t64(cont))


def test_carried_state_follows_caffe_blob_memory_when_streams_change():
    # Blob::Reshape keeps its memory when the count shrinks or regrows within capacity, and
    # starts from zeros past it: h_0 is the first N x D values of the last h_T's memory.
    lay = recurrent("RNN", 2, (1, 2, 3), (1, 2))
    w = blobs(lay)
    one = np.ones((1, 2))
    xa, xb, xc, xd = (RNG.normal(size=(1, n, 3)) for n in (2, 1, 2, 3))
    lay(t64(xa), t64(np.zeros((1, 2))))
    _, ha = ref_rnn(xa, np.zeros((1, 2)), w)
    ob = lay(t64(xb), t64(one[:, :1]))[0]                 # N=1: stream 0 of the last h_T
    eb, hb = ref_rnn(xb, one[:, :1], w, h0=ha[:1])
    np.testing.assert_allclose(ob.detach().numpy(), eb, rtol=0, atol=1e-12)
    oc = lay(t64(xc), t64(one))[0]                         # N=2 again: [h_T of N=1, stale stream 1]
    ec, _ = ref_rnn(xc, one, w, h0=np.concatenate([hb, ha[1:]]))
    np.testing.assert_allclose(oc.detach().numpy(), ec, rtol=0, atol=1e-12)
    od = lay(t64(xd), t64(np.ones((1, 3))))[0]             # N=3 > capacity 2: zeros
    ed, _ = ref_rnn(xd, np.ones((1, 3)), w)
    np.testing.assert_allclose(od.detach().numpy(), ed, rtol=0, atol=1e-12)


# ------------------------------------------------------------- LSTMUnit
UNIT = 'name: "u" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h"'


def test_lstm_unit_hand_computed():
    unit = layer(UNIT, (1, 2, 1), (1, 2, 4), (1, 2))
    c, h = unit(torch.tensor([[[2.0], [2.0]]], dtype=torch.float64),
                torch.zeros(1, 2, 4, dtype=torch.float64), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    # x = 0: i = f = o = 1/2, g = 0; cont 1: c = c_prev / 2 = 1, h = tanh(1) / 2; cont 0: f = 0
    assert c.flatten().tolist() == pytest.approx([1.0, 0.0], abs=1e-15)
    assert h.flatten().tolist() == pytest.approx([0.5 * math.tanh(1.0), 0.0], abs=1e-15)
    gates = torch.tensor([[[0.0, math.nan, 0.0, 0.0]]], dtype=torch.float64)   # cont 0: f = 0, not NaN
    c, h = unit(torch.tensor([[[2.0]]], dtype=torch.float64), gates, torch.zeros(1, 1, dtype=torch.float64))
    assert c.item() == 0.0 and h.item() == 0.0


def test_lstm_unit_forward_and_caffes_backward():
    unit = layer(UNIT, (1, 3, 2), (1, 3, 8), (1, 3))
    assert unit.top_shapes == [(1, 3, 2), (1, 3, 2)] and [unit.allow_force_backward(j) for j in range(3)] == \
        [True, True, False]
    c_prev, x = RNG.uniform(-1, 1, (1, 3, 2)), RNG.uniform(-1, 1, (1, 3, 8))
    cont = np.array([[1.0, 0.0, 0.5]])   # 0.5: Caffe's backward uses f (1 - f) with f = cont sigmoid
    c_diff, h_diff = RNG.normal(size=(1, 3, 2)), RNG.normal(size=(1, 3, 2))
    tc, tx = t64(c_prev).requires_grad_(True), t64(x).requires_grad_(True)
    c, h = unit(tc, tx, t64(cont))
    torch.autograd.backward((c, h), (t64(c_diff), t64(h_diff)))
    for n in range(3):
        ec, eh = ref_unit(c_prev[0, n], x[0, n], cont[0, n])
        np.testing.assert_allclose(c.detach().numpy()[0, n], ec, rtol=0, atol=1e-14)
        np.testing.assert_allclose(h.detach().numpy()[0, n], eh, rtol=0, atol=1e-14)
        e_cp, e_x = ref_unit_backward(c_prev[0, n], x[0, n], cont[0, n], ec, c_diff[0, n], h_diff[0, n])
        np.testing.assert_allclose(tc.grad.numpy()[0, n], e_cp, rtol=0, atol=1e-14)
        np.testing.assert_allclose(tx.grad.numpy()[0, n], e_x, rtol=0, atol=1e-14)
    assert np.all(tx.grad.numpy()[0, 1] [2:4] == 0) and np.all(tc.grad.numpy()[0, 1] == 0)   # cont 0: no f path


def test_lstm_unit_gradcheck_binary_cont():
    unit = layer(UNIT, (1, 3, 2), (1, 3, 8), (1, 3))
    cont = t64([[1.0, 0.0, 1.0]])   # BVLC's TestLSTMUnitGradientNonZeroCont
    c_prev = t64(RNG.uniform(-1, 1, (1, 3, 2))).requires_grad_(True)
    x = t64(RNG.uniform(-1, 1, (1, 3, 8))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: unit(a, b, cont), (c_prev, x))


@pytest.mark.parametrize("shapes, message", [
    (((1, 2, 2), (1, 2, 8), (1, 2, 1)), r"bottom\[2\] must have 2 axes"),
    (((2, 2, 2), (2, 2, 8), (2, 2)), r"bottom\[0\] must hold one timestep"),
    (((1, 2, 2), (1, 3, 8), (1, 2)), r"bottom\[1\] has 3 instances, bottom\[0\] has 2"),
    (((1, 2, 2), (1, 2, 6), (1, 2)), r"bottom\[1\] must have 4 x 2 = 8 gate inputs"),
])
def test_lstm_unit_shape_errors(shapes, message):
    with pytest.raises(CaffeError, match=r"layer 'u' \(LSTMUnit\): " + message):
        layer(UNIT, *shapes)


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("kind", ["RNN", "LSTM"])
def test_gradcheck_inputs_and_weights(kind):
    lay = recurrent(kind, 2, (3, 2, 3), (3, 2), (2, 2), bottoms=("x", "cont", "xs"))
    assert lay.allow_force_backward(0) and not lay.allow_force_backward(1) and lay.allow_force_backward(2)
    cont = t64(CONT)
    names = [n for n, _ in lay.named_parameters()]
    x = t64(RNG.normal(size=(3, 2, 3))).requires_grad_(True)
    xs = t64(RNG.normal(size=(2, 2))).requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in lay.parameters()]

    def f(x, xs, *ps):   # cont is 0 at t=0: the carried state does not enter
        return torch.func.functional_call(lay, dict(zip(names, ps)), (x, cont, xs))[0]

    assert torch.autograd.gradcheck(f, (x, xs, *params))


def test_rnn_no_gradient_reaches_cont():
    lay = recurrent("RNN", 2, (3, 2, 3), (3, 2))
    cont = t64(CONT).requires_grad_(True)
    lay(t64(RNG.normal(size=(3, 2, 3))), cont)[0].sum().backward()
    assert cont.grad is None


# ------------------------------------------------------------- setup errors
@pytest.mark.parametrize("kind, extra, shapes, message", [
    ("RNN", "", ((3,), (3, 2)), r"bottom\[0\] must have at least 2 axes"),
    ("RNN", "", ((3, 2, 4), (3, 2, 1)), r"bottom\[1\] must have exactly 2 axes"),
    ("RNN", "", ((3, 2, 4), (2, 2)), r"bottom\[1\] \(cont\) has shape \(2, 2\)"),
    ("LSTM", "", ((3, 2, 4), (3, 2), (3, 5)), r"bottom\[2\] \(x_static\) must be N x \.\.\. with N = 2"),
    ("LSTM", "", ((3, 2), (3, 2)), r"bottom\[0\] \(x\) needs an axis after .* InnerProduct over axis 2"),
    ("RNN", "", ((3, 2, 4), (3, 2), (2, 1), (2, 1)), r"takes 2 or 3 bottom blob\(s\)"),
    ("LSTM", "expose_hidden: true", ((3, 2, 4), (3, 2), (1, 2, 5)), r"takes 4 or 5 bottom blob\(s\)"),
    ("LSTM", "expose_hidden: true", ((3, 2, 4), (3, 2), (1, 2, 5), (1, 2, 4)),
     r"shape mismatch - bottom\[3\] \(c_0\) has shape \(1, 2, 4\), the recurrent input is \(1, 2, 5\)"),
])
def test_setup_errors_name_the_layer(kind, extra, shapes, message):
    bottoms = ["x", "cont", "a", "b", "c"][:len(shapes)]
    tops = ("y", "h", "c")[:{"": 1, "RNN": 2, "LSTM": 3}[kind if extra else ""]]
    with pytest.raises(CaffeError, match=rf"layer 'r' \({kind}\): " + message):
        recurrent(kind, 5, *shapes, extra=extra, bottoms=bottoms, tops=tops)


def test_num_output_and_top_count_errors():
    with pytest.raises(CaffeError, match=r"layer 'r' \(RNN\): num_output must be positive"):
        recurrent("RNN", 0, (3, 2, 4), (3, 2))
    with pytest.raises(CaffeError, match=r"layer 'r' \(LSTM\): takes exactly 3 top blob\(s\), got 2"):
        recurrent("LSTM", 2, (3, 2, 4), (3, 2), (1, 2, 2), (1, 2, 2), extra="expose_hidden: true",
                  bottoms=("x", "cont", "h", "c"), tops=("y", "h_T"))
    with pytest.raises(CaffeError, match=r"takes at most 2 top blob\(s\), got 3"):   # the declared bound
        recurrent("RNN", 2, (3, 2, 4), (3, 2), tops=("a", "b", "c"))


def test_fillers_weights_and_biases():
    lay = layer('name: "l" type: "LSTM" bottom: "x" bottom: "c" top: "y" recurrent_param { num_output: 2 '
                'weight_filler { type: "constant" value: 0.25 } bias_filler { type: "constant" value: -1 } }',
                (2, 1, 3), (2, 1), (1, 4))
    assert [float(b.detach().unique()) for b in lay.blobs] == [0.25, -1.0, 0.25, 0.25]   # W_xc, b_c, W_xc_static, W_hc
    plain = layer('name: "l" type: "RNN" bottom: "x" bottom: "c" top: "y" recurrent_param { num_output: 2 }',
                  (2, 1, 3), (2, 1))
    assert all(float(b.detach().abs().max()) == 0 for b in plain.blobs)   # FillerParameter's default: constant 0


# ------------------------------------------------------------- nets
NET = """name: "lstm_net"
layer { name: "data" type: "Input" top: "x" top: "cont"
  input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "lstm1"
  param { lr_mult: 1 } param { lr_mult: 2 } param { lr_mult: 1 }
  recurrent_param { num_output: 5
    weight_filler { type: "uniform" min: -0.5 max: 0.5 }
    bias_filler { type: "constant" value: 0.1 } } }
layer { name: "predict" type: "InnerProduct" bottom: "lstm1" top: "predict"
  inner_product_param { num_output: 6 axis: 2 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def test_net_from_prototxt_params_forward_and_caffemodel_round_trip(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text("force_backward: true\n" + NET)
    net = caffe.Net(str(path), caffe.TEST)   # force_backward: no loss here, as in BVLC's net.cpp
    assert {k: [tuple(b.data.shape) for b in v] for k, v in net.params.items()} == \
        {"lstm1": [(20, 4), (20,), (20, 5)], "predict": [(6, 5), (6,)]}
    assert net.blobs["lstm1"].data.shape == (3, 2, 5)
    x = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    cont = np.array([[0, 0], [1, 0], [1, 1]], dtype=np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["cont"].data[...] = cont
    net.reshape()   # a shape-only pass must not disturb the carried state
    out = net.forward()["predict"]
    w = [b.data.astype(np.float64) for b in net.params["lstm1"]]
    h, _, _ = ref_lstm(x.astype(np.float64), cont.astype(np.float64), w)
    wp, bp = (b.data.astype(np.float64) for b in net.params["predict"])
    expected = np.einsum("tnd,od->tno", h, wp) + bp
    np.testing.assert_allclose(out, expected, atol=2e-5)
    net.blobs["predict"].diff[...] = 1
    net.backward()
    assert all(np.abs(b.diff).sum() > 0 for b in net.params["lstm1"])
    assert np.abs(net.blobs["x"].diff).sum() > 0 and not net.blobs["cont"].diff.any()

    net.save(str(tmp_path / "w.caffemodel"))
    saved = load_caffemodel(str(tmp_path / "w.caffemodel"))
    assert [(l.name, [a.shape for a in l.blobs]) for l in saved] == \
        [("lstm1", [(20, 4), (20,), (20, 5)]), ("predict", [(6, 5), (6,)])]
    for a, b in zip(saved[0].blobs, net.params["lstm1"]):
        np.testing.assert_array_equal(a, b.data)
    other = caffe.Net(str(path), caffe.TEST, weights=str(tmp_path / "w.caffemodel"))
    for name in ("lstm1", "predict"):
        for a, b in zip(other.params[name], net.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    other.blobs["x"].data[...] = x
    other.blobs["cont"].data[...] = cont
    np.testing.assert_array_equal(other.forward()["predict"], out)


def test_engine_net_param_order_with_static_input_and_lr_mults(tmp_path):
    text = NET.replace('top: "x" top: "cont"', 'top: "x" top: "cont" top: "img"') \
              .replace("shape { dim: 3 dim: 2 } } }", "shape { dim: 3 dim: 2 } shape { dim: 2 dim: 7 } } }") \
              .replace('bottom: "cont" top: "lstm1"', 'bottom: "cont" bottom: "img" top: "lstm1"')
    net = Net(text, "TRAIN")
    params = [(p.layer, p.index, tuple(p.param.shape), p.lr_mult) for p in net.learnable_params()]
    assert params == [("lstm1", 0, (20, 4), 1.0), ("lstm1", 1, (20,), 2.0), ("lstm1", 2, (20, 7), 1.0),
                      ("lstm1", 3, (20, 5), 1.0), ("predict", 0, (6, 5), 1.0), ("predict", 1, (6,), 1.0)]
    assert float(net.layer("lstm1").blobs[1].detach().unique()) == pytest.approx(0.1)
    net.save(tmp_path / "w.caffemodel")
    fresh = Net(text, "TRAIN")
    assert fresh.copy_from(str(tmp_path / "w.caffemodel"))["copied"] == ["lstm1", "predict"]
    for a, b in zip(fresh.layer("lstm1").blobs, net.layer("lstm1").blobs):
        assert torch.equal(a, b)
