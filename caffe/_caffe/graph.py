"""How a pycaffe Net runs its layers: the ForwardFromTo / BackwardFromTo / Reshape loops over
host blob memory, by the engine net's backward plan (caffe.backward_plan, Caffe's net.cpp
Init rules: ``layer_need_backward``, ``bottom_receives_diff``, ``param_need_backward``,
``force_backward`` included). Net inputs are the Input layers' tops; outputs are the
engine's (blobs no later layer consumes, anonymous tops excluded), sorted by name as
Caffe's std::set keeps them.

Blobs are addressed by the engine's keys (``layer.top_names``), where every anonymous top
is a key of its own; pycaffe shows all of them under Caffe's one name "(automatic)".
"""
from __future__ import annotations

import torch

from .. import CaffeError
from ..syncedmem import push


class Graph:
    """The engine's per-layer backward flags, blob versions and the forward / backward /
    reshape loops."""

    def __init__(self, engine):
        self.engine, self.layers = engine, list(engine.layers)
        self.device = torch.device("cpu")  # where the engine's layers are (set by the pycaffe Net)
        self.inputs = [t for layer in self.layers if layer.type == "Input" for t in layer.top_names]
        self.outputs = sorted(engine.output_names)
        writer = {}
        self.bottom_version = []   # which layer wrote each bottom's value (-1: none), for diff sums
        for i, layer in enumerate(self.layers):
            self.bottom_version.append([writer.get(b, -1) for b in layer.bottom_names])
            for t in layer.top_names:
                writer[t] = i
        self.layer_need = engine.layer_need_backward
        self.bottom_need = engine.bottom_receives_diff
        self.refusals = engine.backward_refusals
        self.param_need = engine.param_need_backward
        self.saved: dict[int, tuple] = {}

    # -------------------------------------------------------------- memory
    def _callbacks(self, net, when: str, i: int) -> None:
        """The net's ``when`` callbacks for layer ``i``; what they wrote to learnable blobs
        through ``.data`` / ``.diff`` reaches the device before the next layer runs."""
        callbacks = net._callbacks[when]
        for fn in callbacks:
            fn(i)
        if callbacks:
            push([p for layer in self.layers for p in layer.blobs])

    def _run(self, net, i: int, record: bool):
        layer = self.layers[i]
        bottoms = [net._blob_at[b].device_data(self.device) for b in layer.bottom_names]
        if not record:
            with torch.no_grad():
                return layer.run(bottoms)
        leaves = [t.detach().requires_grad_(need) for t, need in zip(bottoms, self.bottom_need[i])]
        with torch.enable_grad():
            tops = layer.run(leaves)
        self.saved[i] = (leaves, tops)
        return tops

    # -------------------------------------------------------------- loops
    def forward(self, net, start: int, end: int) -> torch.Tensor:
        """Net::ForwardFromTo: run layers start..end, store their tops; returns the loss (a
        float64 scalar on the net's device: reading it is the caller's choice)."""
        from .batch import fill_data_layer
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(start, end + 1):
            self._callbacks(net, "before_forward", i)
            layer = self.layers[i]
            self.saved.pop(i, None)
            if not fill_data_layer(net, i, layer):
                tops = self._run_checked(net, i)
                refill = getattr(layer, "refill", None)
                for k, (name, t) in enumerate(zip(layer.top_names, tops)):
                    if refill is None or refill[k]:  # DummyData's constant tops keep their memory
                        net._blob_at[name].set_device_data(t, self.device)
            for t, w in zip(layer.top_names, layer.top_loss):
                if w:   # Caffe's Layer::Forward: loss += loss_weight * sum(top)
                    loss = loss + w * net._blob_at[t].device_data(self.device).sum(dtype=torch.float64)
            self._callbacks(net, "after_forward", i)
        return loss

    def _run_checked(self, net, i: int) -> list:
        """_run, with torch's shape errors (a blob reshaped by the user to what the layer cannot
        take) as a CaffeError naming the layer, its bottoms' shapes and its blobs' shapes."""
        try:
            return self._run(net, i, self.layer_need[i])
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as e:
            layer = self.layers[i]
            bottoms = ", ".join(f"{b} {net._blob_at[b].shape}" for b in layer.bottom_names)
            blobs = ", ".join(str(tuple(p.shape)) for p in layer.blobs) or "none"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CaffeError(f"layer {layer.name!r} ({layer.type}): bottom shape(s) {bottoms} do not fit the "
                             f"layer's blob shape(s) {blobs} ({first}); reshape the blobs to agree, or "
                             f"rebuild the net") from None

    def backward(self, net, start: int, end: int) -> None:
        """Net::BackwardFromTo: layers start down to end that need backward."""
        written: set = set()
        for i in range(start, end - 1, -1):
            self._callbacks(net, "before_backward", i)
            if self.layer_need[i]:
                if i in self.refusals:
                    raise CaffeError(self.refusals[i])
                self._backward_layer(net, i, written)
            self._callbacks(net, "after_backward", i)

    def _backward_layer(self, net, i: int, written: set) -> None:
        layer = self.layers[i]
        if layer.is_data or layer.type == "MemoryData" or not (any(self.bottom_need[i]) or any(self.param_need[i])):
            return  # nothing to give a diff to (data layers' Backward is empty)
        leaves, tops = self.saved.get(i) or (None, None)
        if leaves is None:  # no forward recorded since construction: use the blobs' current data
            tops = self._run(net, i, True)
            leaves = self.saved[i][0]
        outs, grads_out = [], []
        for name, t in zip(layer.top_names, tops):
            if t.requires_grad:
                outs.append(t)
                grads_out.append(net._blob_at[name].device_diff(self.device).reshape(t.shape).to(t.dtype))
        wanted = [j for j, need in enumerate(self.bottom_need[i]) if need and leaves[j].requires_grad]
        params = [p for k, p in enumerate(layer.blobs) if self.param_need[i][k] and p.requires_grad]
        inputs = [leaves[j] for j in wanted] + params
        grads = [None] * len(inputs)
        if outs and inputs:
            grads = torch.autograd.grad(outs, inputs, grads_out, retain_graph=True, allow_unused=True)
        for j, g in zip(wanted, grads):
            name = layer.bottom_names[j]
            blob = net._blob_at[name]
            if g is None:
                g = torch.zeros(blob.shape, dtype=torch.float32, device=self.device)
            key = (name, self.bottom_version[i][j])
            if key in written:  # a blob read by several layers: the diffs add up (Caffe's Split)
                blob.add_device_diff(g, self.device)
            else:
                blob.set_device_diff(g.reshape(blob.shape), self.device)
                written.add(key)
        with torch.no_grad():
            for p, g in zip(params, grads[len(wanted):]):
                if g is not None:  # param diffs accumulate until cleared, as in Caffe
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.add_(g)

    def reshape(self, net) -> None:
        """Net::Reshape: each layer's top shapes from its bottoms' current shapes (computed on
        torch's meta device, no data touched); data layers keep theirs."""
        for i, layer in enumerate(self.layers):
            if layer.is_data or not layer.bottom_names:
                continue
            bottoms = [torch.empty(net._blob_at[b].shape, device="meta") for b in layer.bottom_names]
            layer.check_reshape([tuple(t.shape) for t in bottoms])
            try:
                with torch.no_grad():
                    tops = layer(*bottoms)
            except Exception:  # a layer that needs real values to size its tops keeps its shapes
                continue
            for name, t in zip(layer.top_names, tops):
                if tuple(t.shape) != net._blob_at[name].shape:
                    net._blob_at[name].reshape(*t.shape)
