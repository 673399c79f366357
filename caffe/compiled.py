"""``torch.compile`` of a net's TEST forward: ``compile_net(net)`` (``caffe time --compile``,
``deeplab-extract --compile``, ``bench/bench_peers.py --compile``).

The compiled function is the net's exported module (:func:`caffe.export.to_module`, the
layers as ``torch.export`` traces them, returning the requested blobs) given to
``torch.compile`` with inductor and ``freezing`` (weights folded in as constants, convolution
weights prepacked for oneDNN). It is made on the first forward without autograd for a set of
requested blobs, input shapes and devices, and the thread count (inductor's CPU
kernels are generated for the count in force), and reused while those stay the same.

Measured on this project's 2-core CPU (bench/PEERS.md, "Run 4"): compiled, ResNet-50 at
224 ran 1.7-1.9x faster than the planned forward, LargeFOV at 321 1.1-1.3x, the narrow
LargeFOV 1.05x; each compile took 11-48 s. Freezing makes the weights constants: what
depends on them alone (BatchNorm's mean and scale factors...) is computed once, and
convolutions become oneDNN's with prepacked weights and the following ReLU fused (the
generated code calls ``mkldnn._convolution_pointwise``); an unfrozen compile of the narrow
net was no faster than the planned forward in a trial here. Shapes are static
(``dynamic=False``): one compile per input size. bench/bench_compile.py's dynamic-shape
compile compiled twice for three sizes anyway and was no faster per forward, so static shapes
with a limit of :data:`MAX_VARIANTS` compiles per net; later new sizes run the planned forward.

Not frozen: a net where a BN, BatchNorm or Scale layer reads a Deconvolution's top
(:data:`SCALING_TYPES`; inductor's folding of that multiplication gave wrong values).

Frozen weights are copies: the compiled variants are dropped and made again when any
learnable blob of the net changes (its storage or version counter, checked per forward), so
``copy_from`` or an in-place edit after compiling is never ignored.

The forward falls back to the planned one (caffe/inference.py) when autograd is on, when
every blob is asked for (``outputs="all"``), when an input is missing or is not a float32 tensor, under
autocast, and once :data:`MAX_VARIANTS` are compiled. A net with a layer that
``caffe.export`` refuses (Python, DenseCRF, loss, accuracy layers...) cannot be compiled:
asking is a CaffeError naming every such layer. Data layers are no obstacle: their tops are
the compiled function's inputs.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass

import torch

from . import CaffeError

MAX_VARIANTS = 4
# Layers that multiply per channel by constants: inductor's freezing folds such a multiplication
# into the convolution before it, and torch 2.13's folding does not check for transposed
# convolutions (it scales a Deconvolution's weights along their input axis: wrong values, found
# on ENet's Deconvolution + BN). A net with a Deconvolution read by one of these compiles unfrozen.
SCALING_TYPES = frozenset({"BN", "BatchNorm", "Scale"})
BACKEND = "inductor"    # compile_net's default


@dataclass
class _View:
    """What caffe.export's Graph and tracer read of a net: its computing layers (data layers
    left out: their tops are inputs), inputs, the requested outputs, and blob shapes (the
    inputs' at the shapes being compiled for)."""

    layers: list
    input_names: list
    output_names: list
    blob_shapes: dict


def compile_net(net, backend: str | None = None):
    """Give ``net`` (a caffe.net.Net, TEST) a compiled forward (``net.compiled``, compiled lazily
    on its first forward without autograd; ``backend`` defaults to :data:`BACKEND`) and return
    it. A TRAIN net or one with a layer caffe.export refuses is a CaffeError naming the layers.
    (The engine Net imports nothing of this module: caffe.export, which this module needs,
    builds Nets.)"""
    net.compiled = Compiled(net, backend or BACKEND)
    return net


def deconvolution_scaled(net) -> str | None:
    """The first "Deconvolution 'x' -> Type 'y'" of ``net`` where a layer of SCALING_TYPES reads
    a Deconvolution's top, or None."""
    producer = {}
    for layer in net.layers:
        for b in layer.bottom_names:
            src = producer.get(b)
            if src is not None and src.type == "Deconvolution" and layer.type in SCALING_TYPES:
                return f"Deconvolution {src.name!r} -> {layer.type} {layer.name!r}"
        for t in layer.top_names:
            producer[t] = layer
    return None


def refusals(net) -> list[str]:
    """Each layer of ``net`` that cannot be compiled, as "layer 'x' (Type): why"."""
    from .export import refusal
    return [f"layer {layer.name!r} ({layer.type}): {why}"
            for layer in net.layers if not layer.is_data and (why := refusal(layer))]


def _root_cause(e: BaseException) -> str:
    """The innermost exception of ``e``'s chain as "Type: first line"."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "inner_exception", None) or e.__cause__
        if inner is None:
            break
        e = inner
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


class Compiled:
    """The compiled TEST forward of ``net`` (a caffe.net.Net); ``backend`` is torch.compile's
    (``inductor`` with freezing; ``eager`` / ``aot_eager`` compile without code generation)."""

    def __init__(self, net, backend: str = "inductor", max_variants: int = MAX_VARIANTS):
        if net.phase != 1:
            raise CaffeError(f"net {net.name!r}: compile compiles the TEST forward; this net is in TRAIN")
        bad = refusals(net)
        if bad:
            raise CaffeError(f"net {net.name!r} cannot be compiled: " + "; ".join(bad))
        self.net = net
        self.backend = backend
        self.unfrozen_because = deconvolution_scaled(net) if backend == "inductor" else None
        self.freezing = backend == "inductor" and self.unfrozen_because is None
        self.max_variants = max_variants
        self.variants: dict[tuple, object] = {}
        self.first_call_s: dict[tuple, float] = {}   # per variant: its first call (export, compile, one forward)
        self._weights = None
        self._warned = False
        self._layer_tops = {t for layer in net.layers if not layer.is_data for t in layer.top_names}
        self._read = {b for layer in net.layers for b in layer.bottom_names}

    def _fingerprint(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.net.parameters())

    def forward(self, blobs: dict, keep) -> dict | None:
        """The blobs ``keep`` computed from the inputs ``blobs`` by the compiled forward
        (contiguous NCHW), or None where the planned forward must run (see the module doc)."""
        net = self.net
        if torch.is_grad_enabled():
            return None
        outputs = tuple(sorted(keep))
        names = [n for n in net.input_names if n in self._read or n in keep]   # e.g. not an unread label
        inputs = [blobs.get(n) for n in names]
        if not inputs or not all(torch.is_tensor(x) and x.dtype == torch.float32 for x in inputs):
            return None
        if any(torch.is_autocast_enabled(x.device.type) for x in inputs):
            return None
        if not outputs or any(o not in self._layer_tops and o not in names for o in outputs):
            return None
        weights = self._fingerprint()
        if weights != self._weights:
            self.variants.clear()
            self._weights = weights
        key = (outputs, tuple((n, tuple(x.shape), x.device) for n, x in zip(names, inputs)), torch.get_num_threads())
        fn = self.variants.get(key)
        inputs = [x.contiguous() for x in inputs]
        if fn is None:
            if len(self.variants) >= self.max_variants:
                if not self._warned:
                    warnings.warn(f"net {net.name!r}: compiled for {len(self.variants)} input shapes already; "
                                  "further shapes run uncompiled", stacklevel=3)
                    self._warned = True
                return None
            start = time.perf_counter()
            try:
                fn = self._compile(names, outputs, inputs)
                with self._config():     # compiling happens in the first call
                    values = fn(*inputs)
            except CaffeError as e:
                raise CaffeError(f"net {net.name!r} cannot be compiled: {e}") from None
            except Exception as e:
                cause = _root_cause(e)
                hint = ("; inductor needs a working C++ compiler (g++, or the one $CXX names)"
                        if re.search(r"Cxx|CppCompile|C\+\+ compiler", cause) else "")
                raise CaffeError(f"net {net.name!r}: torch.compile ({self.backend}) failed: {cause}{hint}; "
                                 "run without compile") from None
            self.first_call_s[key] = time.perf_counter() - start
            self.variants[key] = fn
        else:
            with self._config():
                values = fn(*inputs)
        return {o: v.contiguous() for o, v in zip(outputs, values)}

    def _compile(self, names: list, outputs: tuple, inputs: list):
        """The exported module of the net for these inputs (names, tensors) and outputs, compiled."""
        from .export import to_module
        net = self.net
        shapes = dict(net.blob_shapes, **{n: tuple(x.shape) for n, x in zip(names, inputs)})
        view = _View([layer for layer in net.layers if not layer.is_data], list(names), list(outputs), shapes)
        with torch.device(inputs[0].device):      # the tracer's example inputs
            module = to_module(view, dynamic=False)
        return torch.compile(module, backend=self.backend, dynamic=False)

    def _config(self):
        """Inductor's settings, in force for every call (Dynamo's guards check them: outside
        them a call compiles again, unfrozen): freezing (unless :func:`deconvolution_scaled`). torch.compile's ``options`` did not
        reach it in torch 2.13 (measured no faster than without)."""
        import contextlib
        if self.backend != "inductor":
            return contextlib.nullcontext()
        import torch._inductor.config as config
        return config.patch(freezing=self.freezing)
