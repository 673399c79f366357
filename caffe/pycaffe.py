"""pycaffe's Net on this engine: named blobs whose ``.data`` / ``.diff`` are the net's memory.

``caffe.Net(proto, phase)`` builds a :class:`caffe.net.Net` (the engine's graph) and runs it
layer by layer as Caffe's Net::ForwardFromTo / BackwardFromTo do, keeping every blob in host
numpy memory that users read and write (``net.blobs['data'].data[...] = x``). Backward
follows net.cpp: only layers that need backward run (a learnable blob with lr_mult != 0
upstream, or force_backward), a loss top's diff is its loss weight, a layer sets its bottoms'
diffs (summed where a blob feeds several layers, as Caffe's Split layers do) and adds to its
learnable blobs' diffs. The per-layer graph is recorded by torch autograd during forward.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import torch

from . import CaffeError, TEST, TRAIN
from .blob import Blob, BlobVec
from .syncedmem import device_wrote, param_data, param_diff, place, push
from ._caffe.graph import Graph
from .common import _MODE, device, set_device, set_mode_cpu, set_mode_gpu  # noqa: F401  (pycaffe's names)
from ._caffe.legacy import LegacyNet, build_phase, deprecated, is_path, set_phase_test, set_phase_train

# ------------------------------------------------------------------ process-wide settings
def set_random_seed(seed: int) -> None:
    """Seed the random numbers of fillers, dropout and DummyData (Caffe::set_random_seed)."""
    torch.manual_seed(int(seed))
    np.random.seed(int(seed) & 0xFFFFFFFF)


def has_nccl() -> bool:
    """Whether ``caffe.NCCL`` can train with several processes (torch.distributed is available)."""
    import torch.distributed as dist
    return dist.is_available()


def layer_type_list() -> list[str]:
    """The registered layer type names, sorted (LayerRegistry::LayerTypeList)."""
    from .layer import REGISTRY
    return sorted(REGISTRY)


# ------------------------------------------------------------------ layer views
class LayerView:
    """pycaffe's view of one engine layer: ``.type``, ``.name`` and ``.blobs`` (a BlobVec)."""

    def __init__(self, layer):
        self._layer = layer
        self.type, self.name = layer.type, layer.name
        self.blobs = BlobVec(layer.blobs)

    def __repr__(self) -> str:
        return f"<caffe.Layer {self.name!r} ({self.type})>"

    def _check_counts(self, bottom, top) -> None:
        layer = self._layer
        if len(bottom) != len(layer.bottom_names) or len(top) != len(layer.top_names):
            raise CaffeError(f"layer {self.name!r} ({self.type}) takes {len(layer.bottom_names)} bottom(s) and "
                             f"{len(layer.top_names)} top(s), got {len(bottom)} and {len(top)}")

    def setup(self, bottom, top) -> None:
        """Layer::LayerSetUp. The layer read its parameters when the net was built, so this
        checks that ``bottom`` and ``top`` hold as many blobs as the layer takes."""
        self._check_counts(bottom, top)

    def reshape(self, bottom, top) -> None:
        """Layer::Reshape: give each blob of ``top`` the shape the layer makes from the shapes
        of ``bottom`` (computed without data; a data layer's tops keep its shapes)."""
        self._check_counts(bottom, top)
        layer = self._layer
        if layer.is_data or not len(bottom):
            shapes = [tuple(1 if d is None else d for d in s) for s in layer.top_shapes]
        else:
            layer.check_reshape([tuple(b.data.shape) for b in bottom])
            with torch.no_grad():
                shapes = [tuple(t.shape) for t in layer(*[torch.empty(b.shape, device="meta") for b in bottom])]
        for blob, shape in zip(top, shapes):
            blob.reshape(*shape)


def _view(layer):
    """The user's object for a Python layer (as pycaffe returns it), else a LayerView."""
    return layer.py if layer.type == "Python" and hasattr(layer, "py") else LayerView(layer)


# ------------------------------------------------------------------ the net
class Net(LegacyNet):
    """``Net(proto, phase)``, ``Net(proto, weights, phase)`` or ``Net(proto, phase, weights=,
    level=, stages=)``: a network in pycaffe's interface (blobs, params, forward, backward, ...).
    The DeepLab fork's ``Net(proto)`` and ``Net(proto, weights)`` (no phase) are accepted with a
    deprecation line: see caffe._caffe.legacy."""

    def __init__(self, network_file, *args, phase=None, weights=None, level: int = 0, stages=None):
        legacy = False
        if len(args) == 2:  # the legacy Net(proto, weights, phase)
            weights, phase = args
        elif len(args) == 1 and is_path(args[0]) and phase is None:   # the fork's Net(proto, weights)
            weights, legacy = args[0], True
        elif len(args) == 1:
            phase = args[0]
        elif args:
            raise TypeError("Net(network_file, phase) or Net(network_file, weights, phase)")
        elif phase is None and weights is None:                       # the fork's Net(proto)
            legacy = True
        if not legacy and phase not in (TRAIN, TEST):
            raise TypeError(f"Net needs a phase, caffe.TRAIN or caffe.TEST (got {phase!r})")
        if not os.path.isfile(network_file):
            raise CaffeError(f"Could not open file {network_file}")
        from .net import Net as EngineNet
        source = network_file
        if legacy:
            deprecated()
            source, phase = build_phase(network_file)
            self._follows_phase = True
        self._init(EngineNet(source, phase, level=int(level), stages=list(stages or ())))
        if weights is not None:
            if not os.path.isfile(weights):
                raise CaffeError(f"Could not open file {weights}")
            self.copy_from(weights)

    @classmethod
    def from_engine(cls, engine, force_backward: bool | None = None) -> "Net":
        """The pycaffe view of an engine net (a solver's train or test net). Its backward
        plan, force_backward included, is the engine's; ``force_backward``, if given, must
        agree with it."""
        if force_backward is not None and bool(force_backward) != engine.force_backward:
            raise CaffeError(f"net {engine.name!r} was built with force_backward: "
                             f"{str(engine.force_backward).lower()}; build it with the other setting instead")
        net = cls.__new__(cls)
        net._init(engine)
        return net

    def _init(self, engine) -> None:
        dev = device()
        place([p for layer in engine.layers for p in layer.blobs], dev)
        self._net = engine.to(dev)
        push(self._params())
        self._graph = Graph(engine)
        self._graph.device = dev
        self._layers = [_view(layer) for layer in engine.layers]
        weights = engine.loss_weights
        # Caffe's blobs_ in creation order, by the engine's keys (each anonymous top its own);
        # their Caffe names are engine.blob_names, every anonymous one "(automatic)".
        self._blob_at = OrderedDict((key, Blob([1 if d is None else d for d in shape], weights.get(key, 0.0)))
                                    for key, shape in engine.blob_shapes.items())
        self._blob_index = {key: i for i, key in enumerate(self._blob_at)}
        # pycaffe's OrderedDict(zip(_blob_names, _blobs)): a repeated "(automatic)" keeps its
        # first position and the last such blob.
        self.blobs = OrderedDict(zip(self._blob_names, self._blobs))
        self._callbacks = {"before_forward": [], "after_forward": [], "before_backward": [], "after_backward": []}
        self._feeds: dict[int, object] = {}
        self._memory_data = None
        self._batch_index: dict[int, int] = {}
        with torch.no_grad():
            for i, layer in enumerate(engine.layers):  # DummyData's constant tops are filled once
                if getattr(layer, "refill", None) is not None:
                    for name, t, refill in zip(layer.top_names, layer(), layer.refill):
                        if not refill:
                            self.blobs[name].set_data(t)

    # -------------------------------------------------------------- names and dicts
    @property
    def layers(self) -> list:
        """The layers in net order (Python layers as the user's objects)."""
        return self._layers

    @property
    def _layer_names(self) -> list[str]:
        return [layer.name for layer in self._net.layers]

    @property
    def _blob_names(self) -> list[str]:
        """Caffe's blob_names_: every blob in creation order, anonymous tops as "(automatic)"."""
        return list(self._net.blob_names)

    @property
    def _blobs(self) -> list[Blob]:
        return list(self._blob_at.values())

    def _name(self, key: str) -> str:
        """Caffe's name of the blob the engine keys ``key``."""
        return self._net.blob_names[self._blob_index[key]]

    @property
    def layer_dict(self) -> OrderedDict:
        """Layers by name. As pycaffe's OrderedDict(zip(names, layers)): a duplicated name keeps
        its first position and its last layer (Caffe's layer_names_index_ also maps to the last)."""
        return OrderedDict(zip(self._layer_names, self._layers))

    @property
    def params(self) -> OrderedDict:
        """Learnable blobs by layer name, layers without blobs left out (duplicates as layer_dict)."""
        return OrderedDict((layer.name, BlobVec(layer.blobs)) for layer in self._net.layers if len(layer.blobs))

    @property
    def inputs(self) -> list[str]:
        """The tops of Input layers (Caffe's net inputs)."""
        return list(self._graph.inputs)

    @property
    def outputs(self) -> list[str]:
        """Blobs no layer consumes, by name (Caffe keeps them in a std::set)."""
        return list(self._graph.outputs)

    @property
    def _inputs(self) -> list[int]:
        return [self._blob_index[b] for b in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        return [self._blob_index[b] for b in self.outputs]

    @property
    def top_names(self) -> OrderedDict:
        """Each layer's top blob names, by layer name (anonymous tops as "(automatic)")."""
        return OrderedDict((layer.name, [self._name(t) for t in layer.top_names]) for layer in self._net.layers)

    @property
    def bottom_names(self) -> OrderedDict:
        """Each layer's bottom blob names, by layer name."""
        return OrderedDict((layer.name, list(layer.bottom_names)) for layer in self._net.layers)

    def _top_ids(self, i: int) -> list[int]:
        return [self._blob_index[b] for b in self._net.layers[i].top_names]

    def _bottom_ids(self, i: int) -> list[int]:
        return [self._blob_index[b] for b in self._net.layers[i].bottom_names]

    @property
    def blob_loss_weights(self) -> OrderedDict:
        """Each blob's loss weight (0 for blobs that are not losses), by name as ``blobs``."""
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [float(self._net.loss_weights.get(key, 0.0)) for key in self._blob_at]

    # -------------------------------------------------------------- running
    def _index(self, name: str, what: str) -> int:
        names = self._layer_names
        if name not in names:
            raise CaffeError(f"{what}: net has no layer {name!r}")
        return names.index(name)

    def _params(self) -> list:
        return [p for layer in self._net.layers for p in layer.blobs]

    def _sync_in(self) -> None:
        """Move the engine to the current mode's device (learnable blobs keeping their host
        arrays) and hand the device the learnable blobs written on the host since it last had
        them (only those: caffe.syncedmem)."""
        self._follow_phase()
        dev = device()
        if self._graph.device != dev:
            place(self._params(), dev)
            self._net.to(dev)
            self._graph.device = dev
        push(self._params())

    def _forward(self, start: int, end: int) -> torch.Tensor:
        """Net::ForwardFromTo(start, end); returns the loss of the layers run (on the device)."""
        self._sync_in()
        try:
            return self._graph.forward(self, start, end)
        finally:
            device_wrote(self._params(), diff=False)   # (BatchNorm's statistics are blobs)

    def _backward(self, start: int, end: int) -> None:
        """Net::BackwardFromTo(start, end)."""
        self._sync_in()
        try:
            self._graph.backward(self, start, end)
        finally:
            device_wrote(self._params(), data=False)

    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Run layers ``start``..``end`` (names, inclusive; default all); keyword arguments fill
        the input blobs. Returns {blob: data} for the outputs (or the ``end`` layer's tops)
        plus ``blobs``."""
        blobs = list(blobs or [])
        start_ind = self._index(start, "forward start") if start is not None else 0
        if end is not None:
            end_ind = self._index(end, "forward end")
            outputs = set(self.top_names[end]) | set(blobs)
        else:
            end_ind = len(self._net.layers) - 1
            outputs = set(self.outputs) | set(blobs)
        if kwargs:
            self._fill(kwargs, self.inputs, "data", "input blob", "inputs", "input", " (reshape the blob first)")
        self._forward(start_ind, end_ind)
        return {name: self.blobs[name].data for name in outputs}

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """Run layers ``start``..``end`` backwards (default: last to first); keyword arguments
        fill the output blobs' diffs. Returns {blob: diff} for the inputs (or the ``end``
        layer's bottoms) plus ``diffs``."""
        diffs = list(diffs or [])
        start_ind = self._index(start, "backward start") if start is not None else len(self._net.layers) - 1
        if end is not None:
            end_ind = self._index(end, "backward end")
            outputs = set(self.bottom_names[end]) | set(diffs)
        else:
            end_ind = 0
            outputs = set(self.inputs) | set(diffs)
        if kwargs:
            self._fill(kwargs, self.outputs, "diff", "top diff", "outputs", "diff")
        self._backward(start_ind, end_ind)
        return {name: self.blobs[name].diff for name in outputs}

    def _fill(self, values: dict, names: list, attr: str, what: str, role: str, item: str, hint: str = "") -> None:
        """Write forward's input arrays (``attr`` "data") or backward's top diffs ("diff") into
        the blobs ``names``, checking the names and the batch sizes."""
        if set(values) != set(names):
            raise CaffeError(f"{what} arguments {sorted(values)} do not match the net's {role} {names}")
        for name, value in values.items():
            value, target = np.asarray(value), getattr(self.blobs[name], attr)
            if value.shape[:1] != target.shape[:1]:
                raise CaffeError(f"{item} {name!r} has batch size {value.shape[:1]}; the blob's is "
                                 f"{target.shape[:1]}{hint}")
            target[...] = value

    def reshape(self) -> None:
        """Net::Reshape: recompute every top's shape from the current input shapes."""
        self._sync_in()
        self._graph.reshape(self)

    def clear_param_diffs(self) -> None:
        """Zero every learnable blob's diff (where it lives: on the device in GPU mode)."""
        self._sync_in()
        with torch.no_grad():
            for p in self._params():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad.zero_()
        device_wrote(self._params(), data=False)

    # -------------------------------------------------------------- weights
    def export(self, onnx: str | None = None, torch: str | None = None, dynamic: bool = True) -> dict:
        """Write the net as ONNX (``onnx``) and/or a torch.export program (``torch``, .pt2);
        see caffe.export. Returns the ONNX inputs (axis names) and outputs."""
        from .export import export
        self._sync_in()
        return export(self._net, onnx, torch, dynamic)

    def to_module(self, dynamic: bool = True):
        """The net as a plain torch ``nn.Module`` whose state_dict is keyed ``<layer>.<i>``."""
        from .export import to_module
        self._sync_in()
        return to_module(self._net, dynamic)

    def save(self, filename: str) -> None:
        """Write the weights as a binary .caffemodel."""
        self._sync_in()
        self._net.save(filename)

    def copy_from(self, filename: str) -> None:
        """Copy weights by layer name from a .caffemodel or an HDF5 file (CopyTrainedLayersFrom)."""
        if not os.path.isfile(filename):
            raise CaffeError(f"Could not open file {filename}")
        self._sync_in()
        self._net.copy_from(filename)
        device_wrote(self._params(), diff=False)

    def share_with(self, other: "Net") -> None:
        """Use ``other``'s learnable blobs for layers of the same name (ShareTrainedLayersWith)."""
        from .solvers.solver import share_weights
        share_weights(other._net, self._net)

    def save_hdf5(self, filename: str) -> None:
        """Net::ToHDF5: every layer's blobs (shared ones only by their owner) and their diffs."""
        from .util.hdf5 import save_hdf5
        self._sync_in()
        owned = {id(layer.blobs[i]) for layer, i in self._net._owned}
        layers = []
        for layer in self._net.layers:
            layers.append((layer.name, [param_data(p, mutable=False) if id(p) in owned else None for p in layer.blobs],
                           [param_diff(p, mutable=False) for p in layer.blobs]))
        save_hdf5(filename, layers)

    def load_hdf5(self, filename: str) -> None:
        """CopyTrainedLayersFromHDF5: weights by layer name from Caffe's HDF5 layout."""
        if not os.path.isfile(filename):
            raise CaffeError(f"Could not open file {filename}")
        self._sync_in()
        self._net.copy_from(filename)
        device_wrote(self._params(), diff=False)

    # -------------------------------------------------------------- batches
    def forward_all(self, blobs=None, **kwargs) -> dict:
        """forward() over inputs of any length, in batches of the net's batch size."""
        from ._caffe.batch import forward_all
        return forward_all(self, blobs, **kwargs)

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward() and backward() over inputs of any length, in batches."""
        from ._caffe.batch import forward_backward_all
        return forward_backward_all(self, blobs, diffs, **kwargs)

    def set_input_arrays(self, data, labels, data_dims=None) -> None:
        """Give the net's MemoryData layer its arrays (N x C x H x W data, N labels; and each
        image's height, width, N x 2, for a MemoryData with a third data_dim top)."""
        from ._caffe.batch import set_input_arrays
        set_input_arrays(self, data, labels, data_dims)

    # -------------------------------------------------------------- callbacks
    def before_forward(self, fn) -> None:
        """Call ``fn(layer_index)`` before each layer's forward."""
        self._callbacks["before_forward"].append(fn)

    def after_forward(self, fn) -> None:
        """Call ``fn(layer_index)`` after each layer's forward."""
        self._callbacks["after_forward"].append(fn)

    def before_backward(self, fn) -> None:
        """Call ``fn(layer_index)`` before each layer's backward."""
        self._callbacks["before_backward"].append(fn)

    def after_backward(self, fn) -> None:
        """Call ``fn(layer_index)`` after each layer's backward."""
        self._callbacks["after_backward"].append(fn)
