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
from .layer import Layer, make_layer

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
        self.layers = nn.ModuleList()
        self.blob_shapes: dict[str, tuple] = {}
        self.input_names: list[str] = []
        self.loss_weights: dict[str, float] = {}
        self._index: dict[str, int] = {}
        shared: dict[str, tuple[nn.Parameter, str]] = {}
        self._owned: list[tuple[Layer, int]] = []
        input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
        phase_name = "TRAIN" if self.phase == 0 else "TEST"
        for lp in filter_layers(param, self.phase, level, stages):
            try:
                self._add_layer(lp, phase_name, input_shapes, shared)
            except CaffeError as e:
                from .prototxt import locate_layer
                where = locate_layer(source, lp.name)
                raise CaffeError(f"{where}: {e}" if where else str(e)) from None
        consumed = {b for layer in self.layers for b in layer.bottom_names}
        self.output_names = [t for t in self.blob_shapes if t not in consumed or t in self.loss_weights]
        self.train(self.phase == 0)
        self._free_plan: dict[frozenset, list[list[str]]] = {}

    # ----------------------------------------------------------------- building
    def _add_layer(self, lp, phase_name: str, input_shapes: dict, shared: dict) -> None:
        """Check a layer's bottoms and tops, build it and record its tops' shapes."""
        if lp.name in self._index:
            raise CaffeError(f"layer {lp.name!r}: duplicate layer name")
        for b in lp.bottom:
            if b not in self.blob_shapes:
                raise CaffeError(f"layer {lp.name!r}: bottom {b!r} is not produced by any earlier layer")
        for t in lp.top:
            if t in self.blob_shapes and t not in lp.bottom:
                raise CaffeError(f"layer {lp.name!r}: top {t!r} is produced by more than one layer")
        layer = make_layer(lp, [self.blob_shapes[b] for b in lp.bottom], phase_name)
        layer.bottom_names = list(lp.bottom)
        layer.top_names = list(lp.top)
        if layer.is_data:
            layer.top_shapes = [input_shapes.get(t, s) for t, s in zip(lp.top, layer.top_shapes)]
            self.input_names.extend(lp.top)
        for t, s in zip(lp.top, layer.top_shapes):
            self.blob_shapes[t] = s
        self._share_params(layer, lp, shared)
        self._set_loss_weights(layer, lp)
        self._index[lp.name] = len(self.layers)
        self.layers.append(layer)

    def _share_params(self, layer: Layer, lp, shared) -> None:
        for i in range(len(layer.blobs)):
            name = lp.param[i].name if i < len(lp.param) else ""
            if name and name in shared:
                owner, owner_layer = shared[name]
                if owner.shape != layer.blobs[i].shape:
                    raise CaffeError(f"layer {lp.name!r}: shared parameter {name!r} has shape "
                                       f"{tuple(layer.blobs[i].shape)} here but {tuple(owner.shape)} in {owner_layer!r}")
                layer.blobs[i] = owner
                continue
            if name:
                shared[name] = (layer.blobs[i], lp.name)
            self._owned.append((layer, i))

    def _set_loss_weights(self, layer: Layer, lp) -> None:
        weights = list(lp.loss_weight)
        if weights and len(weights) != len(lp.top):
            raise CaffeError(f"layer {lp.name!r}: loss_weight must be given once per top ({len(lp.top)})")
        if not weights and layer.is_loss and lp.top:
            weights = [1.0] + [0.0] * (len(lp.top) - 1)
        for t, w in zip(lp.top, weights):
            if w:
                self.loss_weights[t] = float(w)

    # ----------------------------------------------------------------- running
    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
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
        keep_all = outputs == "all"
        keep = frozenset(self.output_names if outputs is None or keep_all else outputs) | frozenset(self.loss_weights)
        plan = None if keep_all else self._plan(keep)
        for i, layer in enumerate(self.layers):
            if layer.is_data:
                continue
            try:
                bottoms = [blobs[b] for b in layer.bottom_names]
            except KeyError as e:
                raise CaffeError(f"layer {layer.name!r}: input blob {e.args[0]!r} was not given") from None
            tops = layer(*bottoms)
            for t, v in zip(layer.top_names, tops):
                blobs[t] = v
            if plan is not None:
                for b in plan[i]:
                    blobs.pop(b, None)
        if outputs is not None and not keep_all:
            return {k: blobs[k] for k in keep if k in blobs}
        return blobs

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
        """Caffe's CopyTrainedLayersFrom: copy blobs by layer name from a ``.caffemodel`` path or
        a list of LayerBlobs. Layers absent here are ignored. A shape mismatch is an error
        naming the layer and both shapes, unless the layer has ``strict_dim: false`` or
        ``ignore_shape_mismatch`` is set, in which case that layer keeps its fillers.
        Returns {"copied": [...], "skipped": [...], "ignored": [...]}."""
        if isinstance(weights, (str, os.PathLike)):
            from .model_io import load_caffemodel
            weights = load_caffemodel(weights)
        source = weights
        report = {"copied": [], "skipped": [], "ignored": []}
        for src in source:
            if src.name not in self._index:
                report["ignored"].append(src.name)
                continue
            layer = self.layer(src.name)
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


def _strict_dim(lp) -> bool:
    """The fork's ``strict_dim`` flag (default true): false lets a mismatched layer be skipped."""
    try:
        return bool(lp.strict_dim) if lp.HasField("strict_dim") else True
    except ValueError:
        return True
