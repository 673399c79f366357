"""Time a net layer by layer, forward and backward: what ``caffe time`` does (tools/caffe.cpp).

As Caffe: one untimed forward and backward pass first, then ``iterations`` timed passes,
each layer's forward in net order and its backward in reverse order. To time one layer's
backward alone, each layer reads detached copies of its bottoms; its backward is
``torch.autograd.backward`` from its tops' diffs to those copies and its own blobs, and
the copies' grads become the diffs of the layers below (summed where a blob feeds several
layers, Caffe's Split). Loss tops start with their loss_weight as diff. Data layers:
ImageSegData's forward time is reading its batch; Input blobs are zeros of their shape (Caffe
times nets "assuming the network does not take any input blobs").

``compile`` (``caffe time --compile``): the TEST forward without autograd, compiled
(caffe/compiled.py), timed as a whole: the first forward (export, compile, one forward) apart,
then ``iterations`` compiled forwards, then as many uncompiled (planned) ones on the same inputs.
"""
from __future__ import annotations

import time

import torch

from .. import CaffeError


def _inputs(net, device, workers: int):
    """(batch function, closeable) for the net's data layers."""
    data = [layer for layer in net.layers if layer.is_data]
    if data and all(layer.type == "Input" for layer in data):
        zeros = {}
        for layer in data:
            for t in layer.top_names:
                shape = net.blob_shapes[t]
                if any(d is None for d in shape):
                    raise CaffeError(f"layer {layer.name!r}: top {t!r} has no fixed shape {shape} to time with")
                zeros[t] = torch.zeros(shape, device=device)
        return (lambda b: zeros), None
    from ..data.stream import NetFeed
    feed = NetFeed(net, 0, 0, 1, workers, device.startswith("cuda"))
    return (lambda b: {k: v.to(device, non_blocking=True) for k, v in feed(b).items()}), feed


class _Pass:
    """One forward and backward pass over the net, timing each layer (milliseconds)."""

    def __init__(self, net, device: str):
        self.net, self.cuda = net, device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def forward(self, batch, forward_ms: list[float]) -> float:
        """Every layer's forward; returns the loss."""
        net = self.net
        start = self.now()
        blobs = batch()
        self.records = []
        data_done = False
        for i, layer in enumerate(net.layers):
            if layer.is_data:
                if not data_done:  # one read fills every data layer's tops
                    forward_ms[i] += (self.now() - start) * 1e3
                    data_done = True
                self.records.append(None)
                continue
            leaves = [blobs[b].detach().requires_grad_(blobs[b].is_floating_point()) for b in layer.bottom_names]
            start = self.now()
            tops = layer(*leaves)
            forward_ms[i] += (self.now() - start) * 1e3
            for name, value in zip(layer.top_names, tops):
                blobs[name] = value
            self.records.append((leaves, tops))
        self.blobs = blobs
        return float(net.loss(blobs).detach()) if net.loss_weights else 0.0

    def backward(self, backward_ms: list[float]) -> None:
        """Every layer's backward, last layer first, from the loss weights down."""
        net = self.net
        for p in net.parameters():
            p.grad = None
        diffs = {name: torch.full_like(self.blobs[name], w) for name, w in net.loss_weights.items()}
        for i in range(len(net.layers) - 1, -1, -1):
            record = self.records[i]
            if record is None:
                continue
            layer = net.layers[i]
            leaves, tops = record
            pairs = [(t, diffs.pop(name)) for name, t in zip(layer.top_names, tops) if name in diffs]
            pairs = [(t, g) for t, g in pairs if t.requires_grad]
            start = self.now()
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
            backward_ms[i] += (self.now() - start) * 1e3
            for name, leaf in zip(layer.bottom_names, leaves):
                if leaf.grad is not None:
                    diffs[name] = diffs[name] + leaf.grad if name in diffs else leaf.grad
        self.records, self.blobs = [], {}


def time_net(model: str, iterations: int = 50, *, phase: str = "TRAIN", level: int = 0, stages=(),
             gpus: str | None = None, mapping: dict[str, str] | None = None, workers: int = 0,
             log=None, compile: bool = False) -> dict[str, float]:
    """Benchmark ``model`` and log Caffe's lines through ``log(where, message)``; returns the
    average forward, backward and forward-backward milliseconds per iteration (with
    ``compile``: see :func:`time_compiled`)."""
    from ..net import Net
    from .scoring import select_device
    from ..solvers.solver import _g

    if iterations < 1:
        raise CaffeError(f"iterations must be at least 1, got {iterations}")
    device = select_device(gpus, log)
    net = Net(model, phase, mapping, level=level, stages=[s for s in stages if s]).to(device)
    if compile:
        from ..compiled import compile_net
        compile_net(net)
    batch, feed = _inputs(net, device, workers)
    info = log or (lambda where, message: None)
    if compile:
        try:
            return time_compiled(net, batch, iterations, _Pass(net, device).now, info)
        finally:
            if feed is not None:
                feed.close()
    run = _Pass(net, device)
    n = len(net.layers)
    forward_ms, backward_ms = [0.0] * n, [0.0] * n
    try:
        info("caffe.cpp:351", "Performing Forward")
        info("caffe.cpp:356", f"Initial loss: {_g(run.forward(lambda: batch(0), [0.0] * n))}")
        info("caffe.cpp:357", "Performing Backward")
        run.backward([0.0] * n)
        info("caffe.cpp:365", "*** Benchmark begins ***")
        info("caffe.cpp:366", f"Testing for {iterations} iterations.")
        total = forward = backward = 0.0
        for j in range(iterations):
            f0 = sum(forward_ms)
            b0 = sum(backward_ms)
            start = run.now()
            run.forward(lambda: batch(j + 1), forward_ms)
            run.backward(backward_ms)
            took = (run.now() - start) * 1e3
            total += took
            forward += sum(forward_ms) - f0
            backward += sum(backward_ms) - b0
            info("caffe.cpp:394", f"Iteration: {j + 1} forward-backward time: {_g(took)} ms.")
    finally:
        if feed is not None:
            feed.close()
    info("caffe.cpp:397", "Average time per layer: ")
    for i, layer in enumerate(net.layers):
        info("caffe.cpp:400", f"{layer.name:>10}\tforward: {_g(forward_ms[i] / iterations)} ms.")
        info("caffe.cpp:403", f"{layer.name:>10}\tbackward: {_g(backward_ms[i] / iterations)} ms.")
    averages = {"forward": forward / iterations, "backward": backward / iterations,
                "forward_backward": total / iterations}
    info("caffe.cpp:408", f"Average Forward pass: {_g(averages['forward'])} ms.")
    info("caffe.cpp:410", f"Average Backward pass: {_g(averages['backward'])} ms.")
    info("caffe.cpp:412", f"Average Forward-Backward: {_g(averages['forward_backward'])} ms.")
    info("caffe.cpp:414", f"Total Time: {_g(total)} ms.")
    info("caffe.cpp:415", "*** Benchmark ends ***")
    return averages


def time_compiled(net, batch, iterations: int, now, info) -> dict[str, float]:
    """``caffe time --compile``: the compiled TEST forward of ``net`` (caffe.compiled.compile_net)
    timed as a whole; returns milliseconds: "first" (export, compile, one forward), "forward"
    (compiled average) and "uncompiled" (the planned forward's average, same inputs)."""
    from ..solvers.solver import _g
    info("caffe.cpp:351", f"Performing Forward, compiled ({net.compiled.backend}): the first forward compiles")
    with torch.inference_mode():
        start = now()
        net(batch(0))
        first = (now() - start) * 1e3
        if not net.compiled.variants:
            raise CaffeError(f"net {net.name!r}: the compiled forward does not run on this net's inputs "
                             "(float32 tensors for every input blob are needed)")
        info("caffe.cpp:356", f"First forward (export, compile, forward): {_g(first)} ms.")
        info("caffe.cpp:365", "*** Benchmark begins ***")
        info("caffe.cpp:366", f"Testing for {iterations} iterations.")
        averages = {"first": first}
        compiled, net.compiled = net.compiled, None
        try:
            for what, held in (("forward", compiled), ("uncompiled", None)):
                net.compiled = held
                total = 0.0
                for j in range(iterations):
                    blobs = batch(j + 1)
                    start = now()
                    net(blobs)
                    took = (now() - start) * 1e3
                    total += took
                    info("caffe.cpp:394", f"Iteration: {j + 1} {'compiled' if held else 'uncompiled'} "
                                          f"forward time: {_g(took)} ms.")
                averages[what] = total / iterations
        finally:
            net.compiled = compiled
    info("caffe.cpp:408", f"Average Forward pass: {_g(averages['forward'])} ms.")
    info("caffe.cpp:408", f"Average Forward pass uncompiled (planned, no autograd): {_g(averages['uncompiled'])} ms.")
    info("caffe.cpp:415", "*** Benchmark ends ***")
    return averages
