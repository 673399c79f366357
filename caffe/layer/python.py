"""The ``Python`` layer: a layer written in Python by the user, as Caffe's PythonLayer.

``python_param { module: "m" layer: "C" param_str: "..." }`` imports module ``m`` from
``sys.path`` (as Caffe does: the prototxt's directory is not searched unless it is on the
path), builds ``C(layer_param)`` — a subclass of :class:`Layer` (``caffe.Layer``) — sets its
``param_str`` and ``phase`` (0 TRAIN, 1 TEST) and calls ``setup(bottom, top)`` then
``reshape(bottom, top)``. Before every forward Caffe calls ``reshape`` again, then
``forward(bottom, top)``; backward calls ``backward(top, propagate_down, bottom)``. bottom
and top are lists of :class:`caffe.blob.Blob` whose ``.data`` / ``.diff`` are numpy arrays;
``self.blobs.add_blob(*shape)`` adds learnable blobs (saved, copied and trained as any
layer's), whose diffs the user's backward writes.
"""
from __future__ import annotations

import importlib

import numpy as np
import torch

from .base import Layer as EngineLayer, register
from ..blob import Blob, BlobVec
from ..syncedmem import push


class Layer:
    """Base class of Python layers (pycaffe's ``caffe.Layer``): override ``setup``,
    ``reshape``, ``forward`` and ``backward``; ``self.param_str``, ``self.phase`` and
    ``self.blobs`` are set by the net before ``setup``."""

    type = "Python"

    def __init__(self, param=None):
        self.layer_param = param

    def setup(self, bottom, top):
        """Read ``self.param_str``, check the bottoms, add learnable blobs."""

    def reshape(self, bottom, top):
        """Give every top its shape (``top[i].reshape(*dims)``); called before each forward."""

    def forward(self, bottom, top):
        """Fill ``top[i].data`` from ``bottom[j].data``."""
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no forward")

    def backward(self, top, propagate_down, bottom):
        """Fill ``bottom[j].diff`` (where ``propagate_down[j]``) and the learnable blobs' diffs."""
        raise NotImplementedError(f"Python layer {type(self).__name__} defines no backward")


def _host(t: torch.Tensor) -> np.ndarray:
    """A float32 host array for a tensor (the same memory for contiguous CPU float32)."""
    t = t.detach()
    if t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous():
        return t.numpy()
    return t.to("cpu", torch.float32).contiguous().numpy()


@register("Python")
class Python(EngineLayer):
    """Runs the user's :class:`Layer` subclass named by ``python_param``. As Caffe's
    PythonLayer it declares no blob counts: the user's ``setup`` checks them."""

    exact_num_top_blobs = -1

    def setup(self, bottom_shapes):
        pp = self.param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both module and layer")
        try:
            module = importlib.import_module(pp.module)
        except ImportError as e:
            raise self.error(f"cannot import python_param.module {pp.module!r} from sys.path: {e}") from None
        cls = getattr(module, pp.layer, None)
        if not isinstance(cls, type):
            raise self.error(f"module {pp.module!r} has no class {pp.layer!r}")
        self.register_buffer("_where", torch.empty(0), persistent=False)  # follows .to(device)
        obj = cls(self.param)
        obj.blobs = BlobVec(self.blobs)
        obj.param_str = pp.param_str
        obj.phase = 0 if str(self.phase).upper() == "TRAIN" else 1
        self.py = obj
        self.tops = [Blob() for _ in range(self.top_count)]
        bottoms = [Blob([1 if d is None else d for d in s]) for s in bottom_shapes]
        obj.setup(bottoms, self.tops)
        obj.reshape(bottoms, self.tops)
        return [t.shape for t in self.tops]

    def forward(self, *bottoms):
        if any(b.device.type == "meta" for b in bottoms):  # shape propagation only (Net.reshape)
            self.py.reshape([Blob(b.shape) for b in bottoms], self.tops)
            return tuple(torch.empty(t.shape, device="meta") for t in self.tops)
        params = list(self.blobs)
        if torch.is_grad_enabled() and any(t.requires_grad for t in list(bottoms) + params):
            return _Function.apply(self, len(bottoms), *bottoms, *params)
        return self.run_forward([Blob.wrap(_host(b)) for b in bottoms])

    def run_forward(self, views: list[Blob]) -> tuple:
        """reshape + forward on host views; returns the tops as tensors on the layer's device."""
        self.py.reshape(views, self.tops)
        self.py.forward(views, self.tops)
        push(list(self.blobs))   # what the user wrote to its learnable blobs reaches the device
        return tuple(torch.from_numpy(np.array(t.data, np.float32)).to(self._where.device) for t in self.tops)


class _Function(torch.autograd.Function):
    """Autograd glue: the user's forward and backward as one differentiable op."""

    @staticmethod
    def forward(ctx, layer, n_bottom, *tensors):
        views = [Blob.wrap(_host(b)) for b in tensors[:n_bottom]]
        ctx.layer, ctx.views, ctx.n_bottom, ctx.n_param = layer, views, n_bottom, len(tensors) - n_bottom
        return layer.run_forward(views)

    @staticmethod
    def backward(ctx, *grads):
        layer, views = ctx.layer, ctx.views
        for top, g in zip(layer.tops, grads):
            top.diff[...] = 0 if g is None else _host(g).reshape(top.diff.shape)
        for v in views:
            v.diff[...] = 0
        propagate = [bool(ctx.needs_input_grad[2 + i]) for i in range(ctx.n_bottom)]
        layer.py.backward(layer.tops, propagate, views)
        push(list(layer.blobs))  # the user wrote the learnable blobs' diffs directly, as in Caffe
        device = layer._where.device
        out = [torch.from_numpy(v.diff.copy()).to(device) if p else None for v, p in zip(views, propagate)]
        return (None, None, *out, *([None] * ctx.n_param))
