"""Net: a Caffe network definition for one phase, executed with PyTorch.

Follows Caffe's Net: layers are kept or dropped by their include/exclude rules for the
net's state (phase, level, stages); blobs are named, a top with a bottom's name is computed
in place; a blob read by several layers is shared (Caffe's implicit split); the tops of data
layers (Input, ImageSegData) are the inputs; blobs that no later layer reads are the
outputs; the loss is the sum of every top times its loss_weight (1 for a loss layer's first
top unless the prototxt says otherwise). Weights move in and out as ``.caffemodel`` files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import CaffeError
from .backward_plan import plan_backward
from .layer import AUTOMATIC, Layer, make_layer
from .proto import caffe_pb2 as pb

PHASES = {"TRAIN": 0, "TEST": 1}


@dataclass
class LearnableParam:
    """One learnable Caffe blob with its ParamSpec multipliers."""

    layer: str
    index: int
    param: nn.Parameter
    lr_mult: float
    decay_mult: float


def _phase_id(phase) -> int:
    if isinstance(phase, str):
        if phase.upper() not in PHASES:
            raise CaffeError(f"phase must be TRAIN or TEST, got {phase!r}")
        return PHASES[phase.upper()]
    return int(phase)


def state_meets_rule(phase: int, level: int, stages: set[str], rule) -> bool:
    """Caffe's NetStateRule test (phase, min_level, max_level, stage, not_stage)."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def filter_layers(net_param, phase: int, level: int = 0, stages=()) -> list:
    """The LayerParameters a net in this state keeps (Caffe's Net::FilterNet)."""
    stages = set(stages)
    kept = []
    for lp in net_param.layer:
        if len(lp.include) and len(lp.exclude):
            raise CaffeError(f"layer {lp.name!r}: specify either include or exclude rules, not both")
        if len(lp.include):
            keep = any(state_meets_rule(phase, level, stages, r) for r in lp.include)
        else:
            keep = not any(state_meets_rule(phase, level, stages, r) for r in lp.exclude)
        if keep:
            kept.append(lp)
    return kept


def legacy_shape(shape) -> tuple:
    """A shape padded with leading 1s to 4 axes (Caffe's LegacyShape, for V1 blobs)."""
    shape = tuple(shape)
    return (1,) * (4 - len(shape)) + shape if len(shape) <= 4 else shape


class Net(nn.Module):
    """A prototxt network for one phase. ``forward(inputs)`` returns a dict of named blobs.

    ``source`` is a prototxt path, its text, or a parsed NetParameter; ``mapping`` fills
    ``${NAME}`` placeholders; ``input_shapes`` overrides data layers' top shapes (e.g. a
    test image size) for shape inference.

    Caffe's net.cpp rules, checked as the layers are added: a layer may give a top a name
    already in use only in place (top i = bottom i), and only if no other layer reads the
    blob it overwrites (Caffe would insert a split there and then refuse the top); a layer
    with AutoTopBlobs (every loss layer) given fewer tops gets anonymous "(automatic)" tops,
    not outputs and not usable as bottoms, whose loss counts. Layer names may repeat, as in
    Caffe: ``layer(name)`` is the last of that name (Caffe's layer_names_index_, pycaffe's
    layer_dict), weights are copied into the first (CopyTrainedLayersFrom's search).

    ``caffe.compiled.compile_net(net)`` gives the net a compiled TEST forward (``compiled``,
    None until then): the forward without autograd then runs ``torch.compile`` of the net's
    exported module where it can (see caffe/compiled.py for when the planned forward runs).
    """

    def __init__(self, source, phase="TEST", mapping=None, input_shapes=None, level: int = 0, stages=()):
        super().__init__()
        if hasattr(source, "layer"):
            param = source
        else:
            from .prototxt import parse_net
            param = parse_net(source, mapping)
        self.name = param.name
        self.phase = _phase_id(phase)
        self.force_backward = bool(param.force_backward)
        self.layers = nn.ModuleList()
        self.layer_names: list[str] = []           # Caffe's layer_names_ (may repeat)
        self.blob_names: list[str] = []            # Caffe's blob_names_: every blob, in creation order
        self.blob_shapes: dict[str, tuple] = {}
        self.input_names: list[str] = []
        self.loss_weights: dict[str, float] = {}
        self._index: dict[str, int] = {}           # name -> last layer of that name
        shared: dict[str, tuple[nn.Parameter, str, int]] = {}
        self._owned: list[tuple[Layer, int]] = []
        self._version: dict[str, int] = {}         # blob name -> id of the value it holds now (in place: a new id)
        self._next_value = 0
        self._readers: dict[int, list[int]] = {}   # value id -> layers reading it
        self._values: list[tuple[int, list[int], list[int]]] = []   # per layer: bottoms' and tops' value ids
        self._explicit_loss: set[int] = set()      # value ids with a nonzero loss_weight in the prototxt
        self._labels: set[str] = set()             # blobs holding a data layer's labels
        input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        # Caffe's Net(file, phase, level, stages): the file's state.stage plus the given ones.
        stages = list(param.state.stage) + list(stages) if param.HasField("state") else list(stages)
        for lp in filter_layers(param, self.phase, level, stages):
            try:
                self._add_layer(lp, input_shapes, shared)
            except CaffeError as e:
                from .prototxt import locate_layer
                where = locate_layer(source, lp.name)
                raise CaffeError(f"{where}: {e}" if where else str(e)) from None
        # Caffe's available_blobs: a bottom is taken, named tops are put (back: in place).
        available: dict[str, None] = {}
        for layer in self.layers:
            for b in layer.bottom_names:
                available.pop(b, None)
            available.update((t, None) for t in layer.top_names if not t.startswith(AUTOMATIC))
        self.output_names = [t for t in self.blob_shapes if t in available]
        plan_backward(self)
        self.train(self.phase == 0)
        self._free_plan: dict[frozenset, list[list[str]]] = {}
        self.compiled = None    # caffe.compiled.compile_net: the compiled TEST forward

    # ----------------------------------------------------------------- building
    def _add_layer(self, lp, input_shapes: dict, shared: dict) -> None:
        """Check a layer's bottoms and tops (Caffe's AppendBottom / AppendTop), build it and
        record its tops' shapes."""
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise CaffeError(f"layer {lp.name!r}: propagate_down must be given 0 times or once per bottom "
                             f"({len(lp.bottom)}), got {len(lp.propagate_down)}")
        for b in lp.bottom:
            if b not in self.blob_shapes or b.startswith(AUTOMATIC):
                raise CaffeError(f"layer {lp.name!r}: bottom {b!r} is not produced by any earlier layer")
        index = len(self.layers)
        bottom_ids = [self._version[b] for b in lp.bottom]
        for v in bottom_ids:
            self._readers.setdefault(v, []).append(index)
        for i, t in enumerate(lp.top):
            if t in lp.top[:i]:
                raise CaffeError(f"layer {lp.name!r}: top {t!r} is given twice")
            if t not in self.blob_shapes:
                continue
            if i >= len(lp.bottom) or lp.bottom[i] != t:
                raise CaffeError(f"layer {lp.name!r}: top {t!r} is already produced by an earlier layer; a later "
                                 f"layer may reuse a blob name only in place, as top {i} = bottom {i}")
            self._check_in_place(lp, t)
        phase = lp.phase if lp.HasField("phase") else self.phase   # a layer's own phase, else the net's
        layer = make_layer(lp, [self.blob_shapes[b] for b in lp.bottom], "TRAIN" if phase == 0 else "TEST")
        layer.explicit_phase = phase if lp.HasField("phase") else None
        names = list(lp.top)
        for _ in range(layer.top_count - len(lp.top)):
            # Caffe names every anonymous top "(automatic)"; our blob dict keys them apart.
            k = sum(n.startswith(AUTOMATIC) for n in list(self.blob_shapes) + names)
            names.append(AUTOMATIC if k == 0 else f"{AUTOMATIC}#{k + 1}")
        layer.bottom_names = list(lp.bottom)
        layer.top_names = names
        if layer.is_data:
            layer.top_shapes = [input_shapes.get(t, s) for t, s in zip(names, layer.top_shapes)]
            self.input_names.extend(t for t in names if not t.startswith(AUTOMATIC))
        self._check_labels(layer)
        check_top_shapes(layer, names)
        top_ids = []
        for i, (t, s) in enumerate(zip(names, layer.top_shapes)):
            if t not in self.blob_shapes:
                self.blob_names.append(AUTOMATIC if t.startswith(AUTOMATIC) else t)
            self.blob_shapes[t] = s
            self._version[t] = self._next_value
            self._next_value += 1
            top_ids.append(self._version[t])
        self._values.append((index, bottom_ids, top_ids))
        self._load_blobs(layer, lp)
        self._share_params(layer, lp, shared)
        self._set_loss_weights(layer, lp, top_ids)
        self._index[lp.name] = index
        self.layer_names.append(lp.name)
        self.layers.append(layer)

    def _check_in_place(self, lp, t: str) -> None:
        """Caffe computes a top in place only when nothing else reads the value it overwrites:
        another reader (or a loss_weight on it) makes InsertSplits give this layer a split
        copy as bottom, and then its top ``t`` is a second producer, which net.cpp refuses."""
        v = self._version[t]
        others = [self.layer_names[i] for i in self._readers.get(v, []) if i != len(self.layers)]
        reads_twice = list(lp.bottom).count(t) > 1
        if others or reads_twice or v in self._explicit_loss:
            who = (f"layer {others[0]!r} also reads it" if others else
                   "this layer reads it twice" if reads_twice else "it carries a loss_weight")
            raise CaffeError(f"layer {lp.name!r}: cannot compute {t!r} in place: {who}, so Caffe splits the "
                             f"blob and refuses the in-place top; give the top another name")

    def _check_labels(self, layer: Layer) -> None:
        """Track blobs holding a data layer's labels; a layer resampling them (Interp shrinking
        the label, the fork's ``shrink_factor``) checks that it only picks pixels."""
        bottoms = layer.bottom_names
        check = getattr(layer, "check_label_resampling", None)
        carries = check is not None and bottoms and bottoms[0] in self._labels
        if carries:
            check([self.blob_shapes[b] for b in bottoms])
        for t in layer.top_names:
            self._labels.discard(t)
        if layer.is_data:
            self._labels.update(layer.top_names[i] for i in layer.label_tops if i < len(layer.top_names))
        elif carries:
            self._labels.add(layer.top_names[0])

    def _load_blobs(self, layer: Layer, lp) -> None:
        """Weights written into the prototxt (LayerParameter.blobs) replace the fillers' values."""
        if not len(lp.blobs):
            return
        if len(lp.blobs) != len(layer.blobs):
            raise CaffeError(f"layer {lp.name!r}: the prototxt gives {len(lp.blobs)} blobs, the layer has "
                             f"{len(layer.blobs)}")
        with torch.no_grad():
            for i, (proto, blob) in enumerate(zip(lp.blobs, layer.blobs)):
                arr = _blob_proto_array(proto)
                if tuple(arr.shape) not in (tuple(blob.shape), legacy_shape(blob.shape)):
                    raise CaffeError(f"layer {lp.name!r}: blob {i} has shape {tuple(arr.shape)} in the prototxt "
                                     f"but {tuple(blob.shape)} in the net")
                blob.copy_(torch.from_numpy(np.asarray(arr, np.float32).reshape(blob.shape)))

    def _share_params(self, layer: Layer, lp, shared) -> None:
        if len(lp.param) > len(layer.blobs):
            raise CaffeError(f"layer {lp.name!r}: {len(lp.param)} param specs given, but the layer has only "
                             f"{len(layer.blobs)} learnable blob(s)")
        for i in range(len(layer.blobs)):
            spec = lp.param[i] if i < len(lp.param) else None
            name = spec.name if spec is not None else ""
            if name and name in shared:
                owner, owner_layer, _ = shared[name]
                if owner.shape != layer.blobs[i].shape:
                    permissive = spec.share_mode == pb.ParamSpec.PERMISSIVE
                    if permissive and owner.numel() == layer.blobs[i].numel():
                        raise CaffeError(f"layer {lp.name!r}: share_mode PERMISSIVE between shapes "
                                         f"{tuple(layer.blobs[i].shape)} and {tuple(owner.shape)} is not supported; "
                                         "give both layers the same shape")
                    raise CaffeError(f"layer {lp.name!r}: shared parameter {name!r} has shape "
                                     f"{tuple(layer.blobs[i].shape)} here but {tuple(owner.shape)} in {owner_layer!r}")
                layer.blobs[i] = owner
                continue
            if name:
                shared[name] = (layer.blobs[i], lp.name, i)
            self._owned.append((layer, i))

    def _set_loss_weights(self, layer: Layer, lp, top_ids: list[int]) -> None:
        """Caffe's SetLossWeights: given once per top (anonymous ones included), or for a loss
        layer 1 on its first top when none is given (LossLayer::LayerSetUp)."""
        weights = list(lp.loss_weight)
        if weights:
            for v, w in zip(top_ids, weights):
                if w:
                    self._explicit_loss.add(v)
        elif layer.is_loss:
            weights = [1.0]
        if weights and len(weights) != layer.top_count:
            raise CaffeError(f"layer {lp.name!r}: loss_weight must be unspecified or given once per top "
                             f"({layer.top_count} top(s), {len(weights)} weight(s))"
                             + ("; a loss layer's default is one weight, so give e.g. loss_weight: 1 loss_weight: 0"
                                if layer.is_loss and not lp.loss_weight else ""))
        layer.top_loss = [float(w) for w in weights] + [0.0] * (layer.top_count - len(weights))
        for t, w in zip(layer.top_names, weights):
            if w:
                self.loss_weights[t] = float(w)

    def train(self, mode: bool = True):
        """nn.Module.train, except that a layer with its own ``phase`` keeps that phase."""
        super().train(mode)
        for layer in self.layers:
            if getattr(layer, "explicit_phase", None) is not None:
                layer.train(layer.explicit_phase == 0)
        return self

    # ----------------------------------------------------------------- running
    def layer(self, name: str) -> Layer:
        """The layer called ``name`` (the last one, if the name repeats: Caffe's layer_by_name)."""
        if name not in self._index:
            raise CaffeError(f"net {self.name!r} has no layer {name!r}")
        return self.layers[self._index[name]]

    def _plan(self, keep: frozenset) -> list[list[str]]:
        """For each layer, the blobs no later layer reads (freed to save memory)."""
        if keep not in self._free_plan:
            last: dict[str, int] = {}
            for i, layer in enumerate(self.layers):
                for b in layer.bottom_names:
                    last[b] = i
            plan = [[] for _ in self.layers]
            for b, i in last.items():
                if b not in keep:
                    plan[i].append(b)
            self._free_plan[keep] = plan
        return self._free_plan[keep]

    def forward(self, inputs: dict | None = None, outputs=None, **named) -> dict[str, torch.Tensor]:
        """Run the layers. ``inputs`` maps data-layer tops to tensors. Returns the output
        blobs and loss tops (or those named in ``outputs``; ``outputs="all"`` keeps every blob)."""
        given = dict(inputs or {}, **named)
        blobs = {k: v for k, v in given.items() if k in self.input_names}
        unknown = set(given) - set(self.input_names)
        if unknown:
            raise CaffeError(f"{sorted(unknown)} are not inputs of net {self.name!r} (inputs: {self.input_names})")
        caller = {_storage(v) for v in blobs.values() if torch.is_tensor(v)}
        keep_all = outputs == "all"
        keep = frozenset(self.output_names if outputs is None or keep_all else outputs) | frozenset(self.loss_weights)
        grad = torch.is_grad_enabled()
        if not grad:
            if self.compiled is not None and not keep_all:
                got = self.compiled.forward(blobs, keep)
                if got is not None:
                    return got
            return self._forward_planned(blobs, caller, keep, keep_all, outputs)
        plan = None if keep_all else self._plan(keep)
        for i, layer in enumerate(self.layers):
            if layer.is_data:
                continue
            try:
                bottoms = [blobs[b] for b in layer.bottom_names]
            except KeyError as e:
                raise CaffeError(f"layer {layer.name!r}: input blob {e.args[0]!r} was not given") from None
            if grad:
                bottoms = [x.detach() if not flow and torch.is_tensor(x) and x.requires_grad else x
                           for x, flow in zip(bottoms, self.bottom_receives_diff[i])]
            tops = layer.run(bottoms, in_place=not grad and self._may_overwrite(layer, bottoms, blobs, caller))
            for t, v in zip(layer.top_names, tops):
                blobs[t] = v
            if plan is not None:
                for b in plan[i]:
                    blobs.pop(b, None)
        if outputs is not None and not keep_all:
            return {k: blobs[k] for k in keep if k in blobs}
        return blobs

    def _forward_planned(self, blobs: dict, caller: set, keep: frozenset, keep_all: bool, outputs) -> dict:
        """The forward without gradients (caffe/inference.py): planned once per kept set;
        on the CPU, convolutions and poolings run on channels_last blobs unless
        ``self.channels_last`` is False; returned blobs are contiguous NCHW."""
        from . import inference
        key = (keep, keep_all)
        steps = self._infer_plans.get(key) if hasattr(self, "_infer_plans") else None
        if steps is None:
            self.__dict__.setdefault("_infer_plans", {})[key] = steps = inference.plan(self, keep, keep_all)
        blobs = inference.run(self, steps, blobs, caller, getattr(self, "channels_last", True))
        if outputs is not None and not keep_all:
            blobs = {k: blobs[k] for k in keep if k in blobs}
        return inference.nchw(blobs)

    @staticmethod
    def _may_overwrite(layer: Layer, bottoms: list, blobs: dict, caller: set) -> bool:
        """In place is safe only for an in-place top (top 0 = bottom 0) whose memory no other
        live blob and no caller tensor shares: Dropout in TEST, Interp at equal size, Crop and
        similar layers hand back their bottom or a view of it under another name."""
        if not layer.top_names or not layer.bottom_names or layer.top_names[0] != layer.bottom_names[0]:
            return False
        x = bottoms[0]
        if not torch.is_tensor(x) or x.numel() == 0:
            return False
        mine = _storage(x)
        if mine in caller:
            return False
        name = layer.bottom_names[0]
        return not any(k != name and torch.is_tensor(v) and _storage(v) == mine for k, v in blobs.items())

    def loss(self, blobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of loss_weight x (sum of the top) over the net's loss tops."""
        total = None
        for name, w in self.loss_weights.items():
            term = blobs[name].sum() * w
            total = term if total is None else total + term
        if total is None:
            raise CaffeError(f"net {self.name!r} has no loss layer")
        return total

    # ----------------------------------------------------------------- params
    def learnable_params(self) -> list[LearnableParam]:
        """Learnable blobs in Caffe's order (layer order, then blob order), shared ones once."""
        out = []
        for layer, i in self._owned:
            spec = layer.param.param[i] if i < len(layer.param.param) else None
            lr = spec.lr_mult if spec is not None else 1.0
            decay = spec.decay_mult if spec is not None else 1.0
            out.append(LearnableParam(layer.name, i, layer.blobs[i], float(lr), float(decay)))
        return out

    def layer_blobs(self):
        """Every layer's blobs as caffe.model_io.LayerBlobs (for save_caffemodel)."""
        from .model_io import LayerBlobs
        return [LayerBlobs(layer.name, layer.type, [b.detach().float().cpu().numpy() for b in layer.blobs])
                for layer in self.layers if len(layer.blobs)]

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights as a binary ``.caffemodel`` (atomically)."""
        from .model_io import save_caffemodel
        save_caffemodel(path, self.layer_blobs(), self.name)

    @torch.no_grad()
    def copy_from(self, weights, ignore_shape_mismatch: bool = False) -> dict[str, list[str]]:
        """Caffe's CopyTrainedLayersFrom: copy blobs by layer name (into the first layer of that
        name) from a ``.caffemodel`` path or a list of LayerBlobs. Layers absent here are ignored. A shape mismatch is an error
        naming the layer and both shapes, unless the layer has ``strict_dim: false`` or
        ``ignore_shape_mismatch`` is set, in which case that layer keeps its fillers.
        Returns {"copied": [...], "skipped": [...], "ignored": [...]}."""
        if isinstance(weights, (str, os.PathLike)):
            from .util.hdf5 import is_hdf5, load_hdf5
            from .model_io import load_caffemodel
            # Caffe's CopyTrainedLayersFrom: an HDF5 file by its signature, else a binary caffemodel
            weights = load_hdf5(weights) if is_hdf5(weights) else load_caffemodel(weights)
        source = weights
        report = {"copied": [], "skipped": [], "ignored": []}
        for src in source:
            if src.name not in self._index:
                report["ignored"].append(src.name)
                continue
            # CopyTrainedLayersFrom searches layer_names_ from the front: with a repeated name
            # the first layer of that name receives the weights, the others keep their fillers.
            layer = self.layers[self.layer_names.index(src.name)]
            if len(src.blobs) != len(layer.blobs):
                raise CaffeError(f"layer {src.name!r}: the weights have {len(src.blobs)} blobs, "
                                   f"the net has {len(layer.blobs)}")
            arrays = []
            for i, (arr, blob) in enumerate(zip(src.blobs, layer.blobs)):
                target = tuple(blob.shape)
                if tuple(arr.shape) != target and tuple(arr.shape) != legacy_shape(target):
                    arrays = None
                    if ignore_shape_mismatch or not _strict_dim(layer.param):
                        break
                    raise CaffeError(f"layer {src.name!r}: blob {i} has shape {tuple(arr.shape)} in the weights "
                                       f"but {target} in the net")
                arrays.append(np.asarray(arr, dtype=np.float32).reshape(target))
            if arrays is None:
                report["skipped"].append(src.name)
                continue
            for arr, blob in zip(arrays, layer.blobs):
                blob.copy_(torch.from_numpy(arr).to(blob.device, blob.dtype))
            report["copied"].append(src.name)
        return report


def check_top_shapes(layer: Layer, names: list[str]) -> None:
    """Every known dimension of every top must be positive (Input dims 0 or -3, a Padding
    cutting more than the input has, a kernel larger than its padded input): refused at
    build time, naming the layer and the top, rather than found by a later layer or shown."""
    for name, shape in zip(names, layer.top_shapes):
        if any(d is not None and int(d) <= 0 for d in shape):
            shown = "x".join("?" if d is None else str(d) for d in shape)
            raise layer.error(f"top {name!r} would have shape {shown}; every dimension must be positive")


def _blob_proto_array(proto) -> np.ndarray:
    """A BlobProto message (shape, or the legacy num/channels/height/width) as an array."""
    if proto.HasField("shape"):
        shape = tuple(int(d) for d in proto.shape.dim)
    else:
        shape = tuple(int(getattr(proto, f)) for f in ("num", "channels", "height", "width"))
    values = proto.double_data if len(proto.double_data) else proto.data
    arr = np.asarray(values, np.float32)
    if arr.size != int(np.prod(shape)):
        raise CaffeError(f"a prototxt blob of shape {shape} holds {arr.size} values")
    return arr.reshape(shape)


def _storage(t: torch.Tensor) -> int:
    """An id of the memory a tensor lives in (views share it)."""
    return t.untyped_storage().data_ptr()


def _strict_dim(lp) -> bool:
    """The fork's ``strict_dim`` flag (default true): false lets a mismatched layer be skipped."""
    try:
        return bool(lp.strict_dim) if lp.HasField("strict_dim") else True
    except ValueError:
        return True
