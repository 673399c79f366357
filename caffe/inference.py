"""The forward without gradients (TEST, extraction), planned once per set of kept blobs.

``caffe.net.Net.forward`` comes here when autograd is off. The plan, made on the first call
for a set of requested blobs and reused, lists per layer its bottoms, its tops, the blobs no
later layer reads (dropped after it: only what is asked for stays alive), whether its top 0
is Caffe's in-place top, and the memory layout it runs in. Measured on this project's 2-core
CPU (bench/bench_peers.py, ``--profile``): the Python bookkeeping between layers costs a few
microseconds a layer; what made small nets slow was the layout. PyTorch's CPU max pooling
on NCHW tensors is 5-10x slower than on channels_last ones (and mkldnn's convolutions take
channels_last without a reorder), so on the CPU a 4-D float blob entering a convolution,
pooling or element-wise layer is kept channels_last (``CHANNELS_LAST_TYPES``); any other
layer (Interp, Softmax, Python, MatWrite...) receives the usual contiguous NCHW tensor, and
every returned blob is contiguous NCHW, as Caffe's blobs are. The values are Caffe's either
way (the layout changes only the order of float additions inside a convolution).

Convolutions (bench/PEERS.md, Run 3): ``F.conv2d`` on the CPU copies the weights into
channels_last and oneDNN reorders them into its blocked format on every call (for FCN's
fc6, 400 MB, most of that layer's time), and single-threaded 1x1 convolutions take torch's
slower non-oneDNN path. So a 2-D float32 Convolution on the CPU runs as one
:class:`FusedConv` step: oneDNN's convolution (``mkldnn::_convolution_pointwise``), its
weights reordered once and cached where that pays (``FusedConv._weights``), and with what
directly follows it folded in where Caffe's visible blobs allow — per-channel affine layers (BatchNorm with stored statistics, Scale,
Bias, the forks' BN) into the weights and bias, then an Eltwise SUM of it and another blob,
then a ReLU, as oneDNN post-ops. A layer is folded in only when the value before it is read by
that layer alone and is not a value the caller sees: not the final value of a kept blob
(every blob with ``keep_all``; in-place chains such as conv -> BatchNorm -> Scale -> ReLU on
one name keep only their final value, as in Caffe) and not a loss. The folded weights are
cached against each parameter's identity, memory and version counter, so ``copy_from``, a
solver step, weight sharing or any in-place write through torch recomputes them. A write
into a parameter's memory that torch does not see (through a numpy view the caller made)
must be followed by :func:`invalidate`. Under CPU bf16 autocast the step runs in bfloat16, as
autocast runs a convolution: the input cast to bf16, the weights folded in float32, then cast
to bf16 and reordered once (cached apart from the float32 ones' key), the sum and ReLU as
bf16 post-ops and a bf16 top (the layers after it get what autocast's convolution gives
them; a folded BatchNorm or Scale no longer widens it to float32). Where oneDNN refuses
bf16 (probed once, :func:`bf16_supported`) that runs the layers one by one, as does anything
else (another device or dtype, fp16 autocast, bottoms the layer would refuse). pycaffe's Net runs its
layers one by one itself (caffe/_caffe/graph.py), never this plan: its ``blobs`` are Caffe's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import CaffeError

# Layers whose torch ops are at least as fast on channels_last tensors and never view them
# as NCHW memory: they receive channels_last bottoms on the CPU.
CHANNELS_LAST_TYPES = frozenset({
    "Convolution", "Deconvolution", "Pooling", "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal",
    "Power", "Exp", "Clip", "Swish", "Dropout", "BatchNorm", "BN", "Scale", "Bias", "Eltwise", "Concat",
})
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Step:
    """One layer of the plan."""

    index: int
    layer: object
    bottoms: tuple
    tops: tuple
    free: tuple          # blobs read for the last time here, dropped after the layer
    in_place: bool       # Caffe's in-place top: top 0 is bottom 0 by name
    channels_last: bool  # runs on channels_last 4-D bottoms (CPU)
    fused: "FusedConv | None" = None   # a convolution and the layers folded into it (runs them all)


def plan(net, keep: frozenset, keep_all: bool, fuse: bool | None = None) -> list[Step]:
    """The steps of a forward of ``net`` that keeps the blobs in ``keep`` (every blob with
    ``keep_all``); with ``fuse`` (default: the net's ``fuse`` attribute, else True, read when
    the plan is made), 2-D convolutions become :class:`FusedConv` steps, each with the layers
    that may be folded into it."""
    if fuse is None:
        fuse = getattr(net, "fuse", True)
    last: dict[str, int] = {}
    for i, layer in enumerate(net.layers):
        for b in layer.bottom_names:
            last[b] = i
    free: dict[int, list[str]] = {}
    if not keep_all:
        for b, i in last.items():
            if b not in keep:
                free.setdefault(i, []).append(b)
    hidden = _hidden_values(net, keep, keep_all) if fuse else None
    cache = net.__dict__.setdefault("_fused_weights", {})   # shared by the plans of every kept set
    steps = []
    i = 0
    while i < len(net.layers):
        layer = net.layers[i]
        if layer.is_data:
            i += 1
            continue
        fused = _fusion(net, i, hidden, cache) if fuse else None
        if fused is not None:
            end = i + len(fused.layers)
            frees = tuple(b for k in range(i, end) for b in free.get(k, ()))
            steps.append(Step(i, layer, fused.bottoms, (fused.top,), frees, False, True, fused))
            i = end
            continue
        bottoms, tops = tuple(layer.bottom_names), tuple(layer.top_names)
        conv_like = layer.type in CHANNELS_LAST_TYPES and getattr(layer, "axis", 1) == 1
        steps.append(Step(i, layer, bottoms, tops, tuple(free.get(i, ())),
                          bool(tops and bottoms and tops[0] == bottoms[0]), conv_like))
        i += 1
    return steps


def _hidden_values(net, keep: frozenset, keep_all: bool) -> set:
    """The value ids (caffe.net.Net._values) no caller sees: not the final value of a kept
    blob (of any blob with ``keep_all``), not a loss top."""
    seen = {v for name, v in net._version.items() if keep_all or name in keep or name in net.loss_weights}
    seen |= net._explicit_loss
    every = {v for _, _, tops in net._values for v in tops}
    return every - seen


def _fusion(net, i: int, hidden: set, cache: dict) -> "FusedConv | None":
    """The FusedConv starting at layer ``i`` (a 2-D Convolution of one bottom), or None."""
    conv = net.layers[i]
    if (conv.type != "Convolution" or len(conv.bottom_names) != 1 or conv.axis != 1 or len(conv.kernel) != 2
            or conv.bottom_axes != (4,) or not _HAS_ONEDNN):
        return None
    chain, affine, add, slope = [conv], [], None, None
    value = net._values[i][2][0]          # the id of the value the chain holds so far
    name = conv.top_names[0]
    j = i + 1
    while j < len(net.layers) and slope is None:
        nxt = net.layers[j]
        if value not in hidden or net._readers.get(value) != [j] or len(nxt.top_names) != 1:
            break
        if nxt.type in AFFINE_TYPES and add is None and nxt.bottom_names == [name]:
            if nxt.channel_affine() is None:
                break
            affine.append(nxt)
        elif nxt.type == "Eltwise" and add is None and _plain_sum(nxt) and nxt.bottom_names.count(name) == 1:
            add = next(b for b in nxt.bottom_names if b != name)
        elif nxt.type == "ReLU" and nxt.bottom_names == [name] and (add is None or nxt.slope == 0):
            slope = nxt.slope             # (oneDNN's post-op after a sum is the plain ReLU only)
        else:
            break
        chain.append(nxt)
        value, name = net._values[j][2][0], nxt.top_names[0]
        j += 1
    return FusedConv(net.layers[i:j], affine, add, slope, cache)


def _plain_sum(layer) -> bool:
    """An Eltwise SUM of two bottoms with coefficients 1."""
    from .layer.combine import SUM
    return layer.op == SUM and len(layer.bottom_names) == 2 and all(c == 1.0 for c in layer.coeff)


AFFINE_TYPES = frozenset({"BatchNorm", "BN", "Scale", "Bias"})
PACK_POSITIONS = 1024   # output positions (num x height x width) up to which weights are kept reordered
_HAS_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv:
    """A 2-D Convolution and the layers folded into it (``layers``, consecutive in the net):
    per-channel affine layers, then optionally an Eltwise SUM with the blob ``add``, then
    optionally a ReLU of ``slope``. Called with the step's bottoms (the convolution's, then
    ``add``), it returns the last layer's top: on the CPU in float32, one oneDNN convolution
    with folded, pre-reordered weights and the sum and ReLU as post-ops; otherwise the layers
    one by one (their values exactly, their errors). ``cache`` holds the folded, reordered
    weights by (convolution, affine layers), shared between plans."""

    def __init__(self, layers, affine, add, slope, cache: dict):
        self.layers, self.affine, self.add, self.slope = list(layers), list(affine), add, slope
        self.cache, self.cache_key = cache, (id(layers[0]),) + tuple(id(layer) for layer in affine)
        self.conv = self.layers[0]
        self.bottoms = tuple(self.conv.bottom_names) + ((add,) if add is not None else ())
        self.top = self.layers[-1].top_names[0]
        c = self.conv
        self._geometry = (list(c.pad), list(c.stride), list(c.dilation), c.group)
        if slope is None:
            self._unary = ("none", [])
        else:
            self._unary = ("relu", []) if slope == 0 else ("leaky_relu", [slope])

    def folded(self) -> tuple:
        """(weight, bias) of the convolution with the affine layers folded in (float32)."""
        conv = self.conv
        w = conv.blobs[0].detach()
        b = conv.blobs[1].detach() if conv.bias_term else None
        if not self.affine:
            return w, b
        a_all = torch.ones(w.shape[0], dtype=torch.float64)
        b_all = b.double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        for layer in self.affine:
            a, c = layer.channel_affine()
            a_all, b_all = a_all * a, b_all * a + c
        w = (w.double() * a_all.reshape(-1, 1, 1, 1)).to(w.dtype)
        return w, b_all.to(w.dtype)

    def _weights(self, x, dtype=torch.float32):
        """(weight, bias) for oneDNN in ``dtype`` (float32, or bfloat16 under autocast), cached:
        reordered into oneDNN's blocked format once when the affine layers are folded in (a
        copy is made anyway) or when the layer has at most ``PACK_POSITIONS`` output positions
        (there reordering the weights on every call costs a noticeable share of the
        convolution; bench/PEERS.md, Run 3); otherwise the (folded) weights themselves, with no
        second copy of them in memory (in bf16, their bf16 copy). The bf16 weights are folded
        in float32 and then rounded; their bias stays float32 unless a sum follows (oneDNN's
        binary post-op wants it bf16)."""
        _, _, *sizes = self._out_shape(x)
        pack = bool(self.affine) or x.shape[0] * sizes[0] * sizes[1] <= PACK_POSITIONS
        # oneDNN picks the blocked weight format for the thread count (measured: ResNet-50's
        # weights reordered for 2 threads run 2.4x slower on 1): it is part of the key.
        key = (dtype, pack, torch.get_num_threads() if pack else 0) + \
            tuple((id(p), p.data_ptr(), p._version) for p in self.conv.blobs) + \
            tuple((id(p), p.data_ptr(), p._version) for layer in self.affine for p in layer.blobs)
        entry = self.cache.get(self.cache_key)
        if entry is None or entry[0] != key:
            self.cache.pop(self.cache_key, None)    # (the old weights go before the new are made)
            w, b = self.folded()
            if dtype != torch.float32:
                w = w.to(dtype)
                if b is not None and self.add is not None:
                    b = b.to(dtype)
            if pack:
                pad, stride, dilation, groups = self._geometry
                w = torch._C._nn.mkldnn_reorder_conv2d_weight(
                    w.contiguous().to_mkldnn(), pad, stride, dilation, groups, list(x.shape))
            entry = self.cache[self.cache_key] = (key, w, None if b is None else b.contiguous())
        return entry[1], entry[2]

    def _dtype(self, bottoms):
        """The dtype oneDNN runs the step in: float32, bfloat16 (CPU bf16 autocast, where
        oneDNN takes it), or None (the layers one by one)."""
        x = bottoms[0]
        w = self.conv.blobs[0]
        dtype, takes = torch.float32, (torch.float32,)
        if torch.is_autocast_enabled("cpu"):
            if torch.get_autocast_dtype("cpu") != torch.bfloat16 or not bf16_supported():
                return None
            dtype, takes = torch.bfloat16, (torch.float32, torch.bfloat16)   # (autocast casts either)
        if not (x.dtype in takes and x.device.type == "cpu" and x.dim() == 4
                and x.shape[1] == w.shape[1] * self.conv.group and w.dtype == torch.float32
                and w.device.type == "cpu"):
            return None
        if self.add is None:
            return dtype
        other = bottoms[1]
        if (torch.is_tensor(other) and other.dtype in takes and other.device.type == "cpu"
                and tuple(other.shape) == self._out_shape(x)):
            return dtype
        return None

    def _out_shape(self, x) -> tuple:
        from .layer.conv import conv_out
        c = self.conv
        sizes = [conv_out(s, k, p, st, d) for s, k, p, st, d in
                 zip(x.shape[2:], c.kernel, c.pad, c.stride, c.dilation)]
        return (x.shape[0], c.blobs[0].shape[0], *sizes)

    def __call__(self, bottoms, fast: bool = True) -> tuple:
        """The top of the last folded layer, from the step's bottoms."""
        dtype = self._dtype(bottoms) if fast else None
        if dtype is None:
            return self.unfused(bottoms)
        x = bottoms[0]
        self.conv.check_reshape([tuple(x.shape)])
        w, b = self._weights(x, dtype)
        x = x.to(dtype)
        pad, stride, dilation, groups = self._geometry
        unary, scalars = self._unary
        if self.add is None:
            return (_POINTWISE(x, w, b, pad, stride, dilation, groups, unary, scalars, ""),)
        return (_POINTWISE.binary(x, bottoms[1].to(dtype), w, b, pad, stride, dilation, groups, "add", None,
                                  None if unary == "none" else unary, scalars, ""),)

    def unfused(self, bottoms) -> tuple:
        """The layers one by one, as the plain plan runs them (their in-place tops overwrite
        only the chain's own intermediate values)."""
        given = dict(zip(self.bottoms, bottoms))
        y = self.conv.run([bottoms[0]])[0]
        name = self.conv.top_names[0]
        for layer in self.layers[1:]:
            args = [y if b == name else given[b] for b in layer.bottom_names]
            y = layer.run(args, in_place=layer.bottom_names[0] == name and layer.top_names[0] == name)[0]
            name = layer.top_names[0]
        return (y,)


_POINTWISE = torch.ops.mkldnn._convolution_pointwise if _HAS_ONEDNN else None
_BF16: list = []   # bf16_supported's answer, once known


def bf16_supported() -> bool:
    """Whether oneDNN's fused convolution runs in bfloat16 here (with the ReLU and the sum
    post-ops): probed once on a tiny convolution; False where torch says oneDNN has no bf16
    or the op refuses it."""
    if not _BF16:
        ok = _HAS_ONEDNN and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if ok:
            x = torch.ones(1, 2, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
            w, b = torch.ones(2, 2, 1, 1, dtype=torch.bfloat16), torch.zeros(2)
            try:
                with torch.autocast("cpu", enabled=False):
                    y = _POINTWISE(x, w, b, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
                    z = _POINTWISE.binary(x, y, w, b.bfloat16(), [0, 0], [1, 1], [1, 1], 1, "add", None,
                                          "relu", [], "")
                ok = y.dtype == z.dtype == torch.bfloat16 and bool((z == 4).all())
            except RuntimeError:
                ok = False
        _BF16.append(bool(ok))
    return _BF16[0]


def invalidate(net) -> None:
    """Make every planned forward of ``net`` fold its weights again: needed only after a
    write into a parameter's memory that torch's version counter does not see (e.g. through
    a numpy view of it); ``copy_from``, solver steps and torch in-place ops are seen."""
    net.__dict__.get("_fused_weights", {}).clear()


def _wants_channels_last(x) -> bool:
    return (torch.is_tensor(x) and x.dim() == 4 and x.device.type == "cpu" and x.dtype in _FLOATS
            and not x.is_contiguous(memory_format=torch.channels_last))


def _is_channels_last_only(x) -> bool:
    return (torch.is_tensor(x) and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def run(net, steps: list[Step], blobs: dict, caller: set, channels_last: bool) -> dict:
    """Run ``steps`` on ``blobs`` (the inputs, by name; modified and returned). ``caller``:
    the memory of the caller's tensors, never overwritten in place."""
    may_overwrite = net._may_overwrite
    for step in steps:
        layer = step.layer
        try:
            bottoms = [blobs[b] for b in step.bottoms]
        except KeyError as e:
            raise CaffeError(f"layer {layer.name!r}: input blob {e.args[0]!r} was not given") from None
        if channels_last:
            convert = _wants_channels_last if step.channels_last else _is_channels_last_only
            fmt = torch.channels_last if step.channels_last else torch.contiguous_format
            for k, (name, x) in enumerate(zip(step.bottoms, bottoms)):
                if convert(x):
                    bottoms[k] = blobs[name] = x.contiguous(memory_format=fmt)   # later readers reuse it
        if step.fused is not None:
            tops = step.fused(bottoms, fast=channels_last)
        else:
            tops = layer.run(bottoms, in_place=step.in_place and may_overwrite(layer, bottoms, blobs, caller))
        for t, v in zip(step.tops, tops):
            blobs[t] = v
        for b in step.free:
            blobs.pop(b, None)
    return blobs


def nchw(blobs: dict) -> dict:
    """The blobs with any channels_last tensor made contiguous NCHW (as Caffe's blobs)."""
    return {k: v.contiguous() if _is_channels_last_only(v) else v for k, v in blobs.items()}
