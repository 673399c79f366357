"""Recurrent layers: BVLC's RNN and LSTM (recurrent_layer.cpp, rnn_layer.cpp, lstm_layer.cpp) and
the LSTMUnit they unroll into (lstm_unit_layer.cpp).

BVLC builds an unrolled net per layer; here the same equations run directly: the input
projection for all T timesteps at once, a loop over time only for the recurrence. Caffe's
rules kept (file:function of BVLC master):

- Bottoms x (T x N x ...), cont (T x N; 0 starts a sequence), then x_static (N x ...) when one
  more bottom is given, then with ``expose_hidden`` the initial states h_0 (RNN; h_0, c_0 for
  LSTM), each 1 x N x num_output. Tops: T x N x num_output, then with ``expose_hidden`` h_T
  (and c_T). (recurrent_layer.hpp MinBottomBlobs/MaxBottomBlobs/ExactNumTopBlobs)
- h_{t-1} is multiplied by cont_t before W_hh / W_hc (the unrolled net's Scale ``h_conted``);
  LSTM's forget gate is 0 where cont_t is 0, else cont_t * sigmoid (lstm_unit_layer.cpp).
- Without ``expose_hidden`` the state carries over between forward passes: h_0 (and c_0) of a
  pass are h_T (c_T) of the previous one, zero at first (RecurrentLayer::Forward_cpu copies the
  recurrent outputs to the inputs). Their memory follows Blob::Reshape: when N grows beyond the
  largest N seen, the state starts from zeros; otherwise the first N x D values are reused.
- Exposed h_0/c_0 bottoms and h_T/c_T tops share only data with the unrolled net
  (RecurrentLayer::Reshape / Forward_cpu, ShareData without ShareDiff): no gradient flows into
  the exposed bottoms or out of the exposed tops. No gradient reaches cont (Backward_cpu).
- Learnable blobs in the unrolled net's param order (its first owners):
  RNN: W_xh (D x K), b_h (D), [W_xh_static (D x K_s)], W_hh (D x D), W_ho (D x D), b_o (D);
  LSTM: W_xc (4D x K), b_c (4D), [W_xc_static (4D x K_s)], W_hc (4D x D); K = count(x, 2),
  K_s = count(x_static, 1); weights from ``weight_filler``, biases from ``bias_filler``.
"""
from __future__ import annotations

import torch

from .base import Layer, register
from .shape_ops import count


def _differ(a, b) -> bool:
    return a is not None and b is not None and int(a) != int(b)


class _LSTMUnitFn(torch.autograd.Function):
    """Caffe's LSTMUnit: gates i, f, o, g (in that order, D values each) of x; forward and
    Caffe's own backward (lstm_unit_layer.cpp). Its forget-gate term is f (1 - f) with
    f = cont * sigmoid(x_f): the true derivative when cont is 0 or 1; for other cont values
    Caffe's formula is kept."""

    @staticmethod
    def forward(ctx, c_prev, x, cont):
        d = c_prev.shape[-1]
        s = torch.sigmoid(x[..., :3 * d])
        i, o = s[..., :d], s[..., 2 * d:]
        g = torch.tanh(x[..., 3 * d:])
        k = cont.unsqueeze(-1)
        f = torch.where(k == 0, torch.zeros_like(c_prev), k * s[..., d:2 * d])   # f = 0 where cont is 0
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        h = o * tanh_c
        ctx.save_for_backward(c_prev, i, f, o, g, tanh_c)
        return c, h

    @staticmethod
    def backward(ctx, c_diff, h_diff):
        c_prev, i, f, o, g, tanh_c = ctx.saved_tensors
        c_term = c_diff + h_diff * o * (1 - tanh_c * tanh_c)
        x_diff = torch.cat((c_term * g * i * (1 - i),        # i
                            c_term * c_prev * f * (1 - f),   # f
                            h_diff * tanh_c * o * (1 - o),   # o
                            c_term * i * (1 - g * g)), -1)   # g
        return c_term * f, x_diff, None


def lstm_unit(c_prev: torch.Tensor, x: torch.Tensor, cont: torch.Tensor):
    """(c, h) of Caffe's LSTMUnit for c_prev (... x D), gate inputs x (... x 4D) and cont (...)."""
    return _LSTMUnitFn.apply(c_prev, x, cont.detach().to(x.dtype))


@register("LSTMUnit")
class LSTMUnit(Layer):
    """BVLC's LSTMUnit: bottoms c_prev (1 x N x D), x (1 x N x 4D), cont (1 x N); tops c and h
    (1 x N x D each). i = sigmoid(x_i), f = cont_n ? cont_n sigmoid(x_f) : 0, o = sigmoid(x_o),
    g = tanh(x_g); c = f c_prev + i g; h = o tanh(c). No gradient reaches cont."""

    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

    no_gradient_to = {2: "the sequence indicators"}

    def allow_force_backward(self, bottom: int) -> bool:
        """Not into the sequence indicators (lstm_layer.hpp)."""
        return bottom != 2

    def setup(self, bottom_shapes):
        n = bottom_shapes[0][1] if len(bottom_shapes[0]) > 1 else None
        for j, shape in enumerate(bottom_shapes):   # LSTMUnitLayer::Reshape
            axes = 2 if j == 2 else 3
            if len(shape) != axes:
                raise self.error(f"bottom[{j}] must have {axes} axes, got shape {shape}")
            if _differ(shape[0], 1):
                raise self.error(f"bottom[{j}] must hold one timestep (shape[0] = 1), got shape {shape}")
            if _differ(shape[1], n):
                raise self.error(f"bottom[{j}] has {shape[1]} instances, bottom[0] has {n}")
        self.hidden = bottom_shapes[0][2]
        if self.hidden is not None and _differ(bottom_shapes[1][2], 4 * int(self.hidden)):
            raise self.error(f"bottom[1] must have 4 x {self.hidden} = {4 * int(self.hidden)} gate inputs "
                             f"per instance, got shape {bottom_shapes[1]}")
        return [tuple(bottom_shapes[0])] * 2

    def forward(self, c_prev, x, cont):
        if c_prev.dim() != 3 or x.dim() != 3 or cont.dim() != 2 or c_prev.shape[0] != 1 \
                or x.shape[2] != 4 * c_prev.shape[2] or not c_prev.shape[:2] == x.shape[:2] == cont.shape:
            raise self.error(f"bottoms must be 1 x N x D, 1 x N x 4D and 1 x N, got "
                             f"{tuple(c_prev.shape)}, {tuple(x.shape)} and {tuple(cont.shape)}")
        return lstm_unit(c_prev, x, cont)


class _Recurrent(Layer):
    """BVLC's RecurrentLayer: the bottom/top contract, shape checks and state carry-over shared
    by RNN and LSTM; subclasses give ``states`` (their recurrent inputs), ``gates`` (rows of
    the input transform per output), ``recurrent_blobs`` (the blobs after the input
    transform's: rows per output, and whether a D-column weight or a bias) and ``recur``."""

    states: tuple = ()
    gates = 1
    recurrent_blobs: tuple = ()
    min_bottom_blobs = 2
    exact_num_top_blobs, min_top_blobs = -1, 1

    no_gradient_to = {1: "the sequence indicators"}

    def allow_force_backward(self, bottom: int) -> bool:
        """Not into the sequence indicators (recurrent_layer.hpp)."""
        return bottom != 1

    def setup(self, bottom_shapes):
        p = self.param.recurrent_param
        self.expose = bool(p.expose_hidden)
        exposed = len(self.states) if self.expose else 0
        low, tops = 2 + exposed, 1 + exposed   # MinBottomBlobs / MaxBottomBlobs / ExactNumTopBlobs
        if not low <= len(bottom_shapes) <= low + 1:
            raise self.error(f"takes {low} or {low + 1} bottom blob(s) (x, cont, [x_static]"
                             f"{', ' + ', '.join(self.states) if exposed else ''}), got {len(bottom_shapes)}")
        if self.top_count != tops:
            raise self.error(f"takes exactly {tops} top blob(s), got {self.top_count}")
        x, cont = bottom_shapes[0], bottom_shapes[1]
        if len(x) < 2:
            raise self.error(f"bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...), got shape {x}")
        self.T, n = x[0], x[1]
        if len(cont) != 2:
            raise self.error(f"bottom[1] must have exactly 2 axes -- (#timesteps, #streams), got shape {cont}")
        if _differ(cont[0], self.T) or _differ(cont[1], n):
            raise self.error(f"bottom[1] (cont) has shape {cont}, bottom[0] (x) has {x[0]} timesteps "
                             f"of {x[1]} streams")
        self.static = len(bottom_shapes) > low
        if self.static:
            xs = bottom_shapes[2]
            if len(xs) < 1 or _differ(xs[0], n):
                raise self.error(f"bottom[2] (x_static) must be N x ... with N = {n} streams, got shape {xs}")
        self.D = int(p.num_output)
        if self.D <= 0:
            raise self.error("num_output must be positive")
        if len(x) < 3:   # the input transform is an InnerProduct on axis 2
            raise self.error(f"bottom[0] (x) needs an axis after (#timesteps, #streams): the input "
                             f"transform is an InnerProduct over axis 2, got shape {x}")
        self.K = count(x, 2)
        if self.K is None:
            raise self.error(f"the inner dims of bottom[0] {x} from axis 2 must be known")
        rows = self.gates * self.D
        self.add_blob((rows, self.K), p.weight_filler)
        self.add_blob((rows,), p.bias_filler)
        if self.static:
            self.Ks = count(bottom_shapes[2], 1)
            if self.Ks is None:
                raise self.error(f"the inner dims of bottom[2] {bottom_shapes[2]} from axis 1 must be known")
            self.add_blob((rows, self.Ks), p.weight_filler)
        for mult, weight in self.recurrent_blobs:
            if weight:
                self.add_blob((mult * self.D, self.D), p.weight_filler)
            else:
                self.add_blob((mult * self.D,), p.bias_filler)
        state_shape = (1, n, self.D)
        for j, shape in enumerate(bottom_shapes[2 + self.static:]):   # RecurrentLayer::Reshape
            if len(shape) != 3 or any(_differ(a, b) for a, b in zip(shape, state_shape)):
                raise self.error(f"shape mismatch - bottom[{2 + self.static + j}] ({self.states[j]}) has shape "
                                 f"{shape}, the recurrent input is {state_shape}")
        self._carry = [None] * len(self.states)   # the recurrent output blobs' memory
        return [(self.T, n, self.D)] + [state_shape] * exposed

    def reset(self) -> None:
        """Caffe's RecurrentLayer::Reset: the carried state becomes zero."""
        self._carry = [None if c is None else torch.zeros_like(c) for c in self._carry]

    def _initial(self, j: int, n: int, like: torch.Tensor) -> torch.Tensor:
        size = n * self.D
        kept = self._carry[j]
        if kept is None or kept.numel() < size:   # Blob::Reshape past capacity: fresh zeros
            return like.new_zeros((n, self.D))
        return kept[:size].to(like).reshape(n, self.D)

    def _keep(self, j: int, state: torch.Tensor) -> None:
        if state.is_meta:   # a shape-only pass (pycaffe's reshape) leaves the state alone
            return
        flat = state.detach().reshape(-1)
        kept = self._carry[j]
        if kept is None or kept.numel() <= flat.numel():
            self._carry[j] = flat.clone()
        else:
            kept = kept.to(flat).clone()
            kept[:flat.numel()] = flat
            self._carry[j] = kept

    def forward(self, x, cont, *rest):
        if x.dim() < 3 or cont.dim() != 2:
            raise self.error(f"bottoms must be x (T x N x ...) and cont (T x N), got {tuple(x.shape)} "
                             f"and {tuple(cont.shape)}")
        t, n = x.shape[0], x.shape[1]
        if self.T is not None and t != self.T:
            raise self.error(f"input number of timesteps changed: {t}, set up with {self.T}")
        if tuple(cont.shape) != (t, n):
            raise self.error(f"bottom[1] (cont) has shape {tuple(cont.shape)}, expected {(t, n)}")
        if count(x.shape, 2) != self.K:
            raise self.error(f"bottom[0] has {count(x.shape, 2)} values per timestep and stream, "
                             f"the weights take {self.K}")
        self.T = t
        rest = list(rest)
        w, b = self.blobs[0], self.blobs[1]
        # x_transform: W x_t + b for all timesteps at once (InnerProduct, axis 2)
        pre = torch.matmul(x.reshape(t, n, self.K), w.t()) + b
        extra = None
        if self.static:
            xs = rest.pop(0)
            if xs.dim() < 1 or xs.shape[0] != n or count(xs.shape, 1) != self.Ks:
                raise self.error(f"bottom[2] (x_static) has shape {tuple(xs.shape)}, expected {n} x "
                                 f"({self.Ks} values)")
            extra = torch.matmul(xs.reshape(n, self.Ks), self.blobs[2].t())
        if self.expose:
            init = []
            for j, s in enumerate(rest):
                if tuple(s.shape) != (1, n, self.D):
                    raise self.error(f"shape mismatch - bottom {self.states[j]} has shape {tuple(s.shape)}, "
                                     f"the recurrent input is {(1, n, self.D)}")
                init.append(s.detach().reshape(n, self.D))   # ShareData only: no gradient into h_0/c_0
        else:
            init = [self._initial(j, n, pre) for j in range(len(self.states))]
        cont = cont.detach().to(pre.dtype)
        top, final = self.recur(pre, extra, cont, init)
        if self.expose:
            return (top,) + tuple(s.detach().reshape(1, n, self.D) for s in final)
        for j, s in enumerate(final):
            self._keep(j, s)
        return (top,)


@register("RNN")
class RNN(_Recurrent):
    """BVLC's RNN: h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); the top is o (T x N x num_output)."""

    states = ("h_0",)
    max_bottom_blobs, max_top_blobs = 4, 2
    recurrent_blobs = ((1, True), (1, True), (1, False))   # W_hh, W_ho, b_o

    def recur(self, pre, extra, cont, init):
        w_hh, w_ho, b_o = self.blobs[-3], self.blobs[-2], self.blobs[-1]
        h = init[0]
        hs = []
        for t in range(pre.shape[0]):
            s = torch.matmul(h * cont[t].unsqueeze(-1), w_hh.t()) + pre[t]   # Eltwise SUM in Caffe's order
            if extra is not None:
                s = s + extra
            h = torch.tanh(s)
            hs.append(h)
        o = torch.tanh(torch.matmul(torch.stack(hs), w_ho.t()) + b_o)
        return o, [h]


@register("LSTM")
class LSTM(_Recurrent):
    """BVLC's LSTM: gate inputs W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]
    (4 x num_output: i, f, o, g) feed the LSTMUnit with c_{t-1} and cont_t; the top is h
    (T x N x num_output)."""

    states = ("h_0", "c_0")
    gates = 4
    max_bottom_blobs, max_top_blobs = 5, 3
    recurrent_blobs = ((4, True),)   # W_hc

    def recur(self, pre, extra, cont, init):
        w_hc = self.blobs[-1]
        h, c = init
        hs = []
        for t in range(pre.shape[0]):
            gates = torch.matmul(h * cont[t].unsqueeze(-1), w_hc.t()) + pre[t]
            if extra is not None:
                gates = gates + extra
            c, h = _LSTMUnitFn.apply(c, gates, cont[t])
            hs.append(h)
        return torch.stack(hs), [h, c]
