"""What a network definition computes, without running it: per layer its tops' shapes,
its parameter count, and each blob's stride and receptive field (``tools/netinfo.py``).

The net is built with the engine's own layers on PyTorch's ``meta`` device, so shapes and
parameter counts come from the same code that runs the net, and nothing is allocated (the
7x7 variant's 540 MB of weights included). MatWrite layers get their id list cleared first:
they have no tops, and the list need not exist to describe the net.

Stride and receptive field are per spatial axis (height, width), in input pixels, for the
blobs of data layers (image and label tops: stride 1, field 1) and everything computed from
them:

- Convolution and Pooling: ``rf += (k_eff - 1) * stride_in`` with ``k_eff = d (k - 1) + 1``
  (dilation d; 1 for pooling), and ``stride *= s``. Global pooling sees its whole input.
- Interp (bilinear, corners aligned): output pixel i reads input position i * r with
  ``r = (in - 1) / (out - 1)`` (after its pad_beg/pad_end crop), so the stride becomes
  ``stride * r`` (a fraction when zooming); the field grows by one input stride, since each
  output blends two neighbouring input samples, unless r is a whole number and every
  output pixel sits exactly on an input sample (e.g. the label's shrink_factor 8).
- Padding and Crop shift and cut, keeping stride and field of bottom 0.
- Eltwise and Concat: the largest field of their bottoms; the stride where the bottoms
  agree (unknown otherwise: the bottoms are not aligned).
- Element-wise layers (ReLU, Dropout, Softmax, ...) keep their bottom's values.
- Anything else (losses, SegAccuracy, data_dim, ...) has no spatial meaning: ``None``.
"""
from __future__ import annotations

import ast
import json
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from caffe import CaffeError

from . import DeepLabError
from caffe.layer import REGISTRY

ELEMENTWISE = {"ReLU", "Dropout", "Softmax", "Sigmoid", "TanH", "AbsVal", "Power", "Exp",
               "BNLL", "PReLU", "ELU", "Threshold", "BatchNorm", "Scale", "Bias", "Split"}

Pair = tuple  # (height value, width value); each an int or Fraction


@dataclass
class BlobInfo:
    """One top: its shape (None entries where unknown), stride and receptive field per axis."""

    name: str
    shape: tuple | None
    stride: Pair | None = None
    rf: Pair | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": None if self.shape is None else list(self.shape),
                "stride": _pair_json(self.stride), "rf": _pair_json(self.rf)}


@dataclass
class LayerInfo:
    """One layer: type, bottoms, tops and learnable parameters (count and blob shapes)."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[BlobInfo]
    params: int = 0
    param_shapes: list[tuple] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "bottoms": self.bottoms,
                "tops": [t.to_dict() for t in self.tops], "params": self.params,
                "param_shapes": [list(s) for s in self.param_shapes]}


@dataclass
class NetInfo:
    """A whole net for one phase: its layers in order, inputs, outputs and total parameters."""

    name: str
    phase: str
    layers: list[LayerInfo]
    inputs: list[str]
    outputs: list[str]
    total_params: int

    def blob(self, name: str) -> BlobInfo:
        """The last layer's top called ``name`` (in-place layers write a blob again)."""
        found = None
        for layer in self.layers:
            for top in layer.tops:
                if top.name == name:
                    found = top
        if found is None:
            raise DeepLabError(f"net {self.name!r} has no blob {name!r}")
        return found

    def to_dict(self) -> dict:
        """JSON-ready form (strides and fields as [height, width], fractions as floats)."""
        return {"name": self.name, "phase": self.phase, "inputs": self.inputs, "outputs": self.outputs,
                "total_params": self.total_params, "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format_table(self) -> str:
        """A per-layer table (one row per top) followed by the totals."""
        rows = [("layer", "type", "top", "shape", "stride", "rf", "params")]
        for layer in self.layers:
            tops = layer.tops or [BlobInfo("-", None)]
            for i, top in enumerate(tops):
                first = i == 0
                rows.append((layer.name if first else "", layer.type if first else "", top.name,
                             _shape_text(top.shape) if top.name != "-" else "",
                             _pair_text(top.stride), _pair_text(top.rf),
                             f"{layer.params:,}" if first and layer.params else ""))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        lines = []
        for r in rows:
            cells = [r[c].rjust(widths[c]) if c == 6 else r[c].ljust(widths[c]) for c in range(len(r))]
            lines.append("  ".join(cells).rstrip())
        lines.insert(1, "-" * len(lines[0]))
        lines.append("")
        lines.append(f"net {self.name!r} ({self.phase}): {len(self.layers)} layers, "
                     f"{self.total_params:,} parameters ({self.total_params / 1e6:.1f}M)")
        for kind, names in (("input", self.inputs), ("output", self.outputs)):
            for n in names:
                b = self.blob(n)
                extra = ""
                if b.stride is not None:
                    extra = f", stride {_pair_text(b.stride)}, receptive field {_pair_text(b.rf)}"
                lines.append(f"{kind} {n}: {_shape_text(b.shape)}{extra}")
        return "\n".join(lines)


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    """``"N,C,H,W"`` -> a 4-tuple of positive ints (``--input``)."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise DeepLabError(f"--input expects N,C,H,W (four positive integers), got {text!r}")
    return dims


def parse_input_arg(text: str) -> tuple[str | None, tuple]:
    """One ``--input``: ``"N,C,H,W"`` -> (None, 4-tuple), the first data layer's image shape; or
    ``"TOP=d0,d1,..."`` -> (TOP, shape), one data top's shape with any number of positive axes
    (``label=10`` for a label of 10 values, ``data=10,4`` for HDF5 rows of 4 features)."""
    name, sep, dims_text = text.partition("=")
    if not sep:
        return None, parse_input_shape(text)
    parts = [p.strip() for p in dims_text.replace("x", ",").split(",")]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not name.strip() or not dims or min(dims) < 1:
        raise DeepLabError(f"--input expects N,C,H,W or TOP=D0,D1,... (positive integers), got {text!r}")
    return name.strip(), dims


_LAYER = re.compile(r"""layer ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def _located(source, message: str) -> str:
    """``message`` about "layer 'NAME'" with the layer's ``FILE:LINE`` in front, as the
    ``caffe`` command prints it (unchanged where the layer cannot be found)."""
    from caffe.prototxt import locate_layer

    m = _LAYER.match(message)
    if not m or not isinstance(source, (str, os.PathLike)):
        return message
    try:
        where = locate_layer(source, ast.literal_eval(m.group(1)))
    except (CaffeError, ValueError, SyntaxError):
        return message
    return f"{where}: {message}" if where else message


def net_info(source, phase: str = "TEST", mapping: dict | None = None,
             input_shape: tuple | None = None, level: int = 0, stages=(),
             input_tops: dict | None = None) -> NetInfo:
    """Describe the net in ``source`` (prototxt path, text or NetParameter) for ``phase``, ``level``
    and ``stages`` (Caffe's NetState: the file's own state.stage are added to them).

    Nothing is read: data layers that would open their source (Data, ImageData, HDF5Data,
    WindowData, DenseImageData, Python layers without bottoms) take their shapes from the
    prototxt (ImageData / WindowData with a crop or new size) or from ``input_shape`` (N, C,
    H, W), which replaces every data layer's tops (the first one's top 0 is the image, labels
    N x 1 x H x W or N), e.g. to see what a 321x321 crop gives; ``input_tops`` ({top: shape})
    gives named tops their own shapes (any number of axes) and wins over both. A data layer
    whose shapes none of them gives is refused with a DeepLabError naming it and asking for
    --input. A net using layer types the engine lacks is refused with every such type and its
    layers named at once.
    """
    from caffe.net import Net, filter_layers, _phase_id
    from caffe.prototxt import parse_net
    from caffe.proto import caffe_pb2

    param = source if hasattr(source, "layer") else parse_net(source, mapping)
    name = source if isinstance(source, (str, os.PathLike)) and not hasattr(source, "layer") else "the net"
    if not len(param.layer) and not len(param.layers):
        raise DeepLabError(f"{name} defines no layers (an empty file, or not a net prototxt?)")
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(param)
    for lp in copy.layer:
        if lp.type == "MatWrite":
            lp.mat_write_param.ClearField("source")
    all_stages = list(copy.state.stage) + list(stages) if copy.HasField("state") else list(stages)
    kept = filter_layers(copy, _phase_id(phase), level, all_stages)
    if not kept:
        raise DeepLabError(f"{name} has no layer in the {phase} phase (see its include/exclude rules)")
    missing = missing_types(kept)
    if missing:
        raise DeepLabError(f"{name} needs {len(missing)} layer type(s) this engine lacks: "
                           + "; ".join(f"{t} ({len(ls)} layer{'s' if len(ls) > 1 else ''}: {', '.join(ls[:4])}"
                                       f"{', ...' if len(ls) > 4 else ''})" for t, ls in missing.items()))
    try:
        original = _replace_data_layers(copy, kept, input_shape, input_tops or {})
        with torch.device("meta"):
            net = Net(copy, phase, level=level, stages=stages)
    except CaffeError as e:
        raise DeepLabError(_located(source, str(e))) from None
    for layer in net.layers:   # a data layer replaced by an Input layer is shown as what it was
        layer.type = original.get(layer.name, layer.type)
    return describe(net)


def missing_types(layers) -> dict[str, list[str]]:
    """Layer types of ``layers`` (LayerParameters) without an engine implementation -> their layers'
    names, in order of first use."""
    missing: dict[str, list[str]] = {}
    for lp in layers:
        if lp.type not in REGISTRY:
            missing.setdefault(lp.type, []).append(lp.name or "(unnamed)")
    return missing


# Data-producing layers that read nothing to know their tops' shapes (the engine builds them as
# they are); every other one would open its source (list, LMDB, HDF5, mean file, Python module).
READS_NOTHING = {"Input", "ImageSegData", "MemoryData", "DummyData"}
# Their label tops are one value per item; other data layers' extra tops are N x 1 x H x W maps.
PER_ITEM_LABELS = {"Data", "ImageData", "WindowData", "MemoryData"}
# Their third top is each image's (height, width), N x 1 x 1 x 2: no pixels, no geometry.
DATA_DIM_TOPS = {"ImageSegData", "MemoryData"}


def _produces_data(lp) -> bool:
    cls = REGISTRY.get(lp.type)
    return bool(len(lp.top)) and ((cls is not None and cls.is_data) or (lp.type == "Python" and not len(lp.bottom)))


def _prototxt_shapes(lp) -> list | None:
    """A data layer's top shapes from its prototxt alone (batch, crop / new size, colour), or
    None where they come from the data."""
    crop = int(lp.transform_param.crop_size) if lp.HasField("transform_param") else 0
    if lp.type == "ImageData":
        p = lp.image_data_param
        h, w = (crop, crop) if crop else (int(p.new_height), int(p.new_width))
        if h and w:
            n = int(p.batch_size) or 1
            return [(n, 3 if p.is_color else 1, h, w), (n,)][:len(lp.top)]
    if lp.type == "WindowData" and (crop or lp.window_data_param.crop_size):
        p = lp.window_data_param
        size = crop or int(p.crop_size)
        n = int(p.batch_size) or 1
        return [(n, 3, size, size), (n,)][:len(lp.top)]
    return None


def _source_of(lp) -> str:
    for field_name in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param",
                       "dense_image_data_param"):
        if lp.HasField(field_name) and getattr(getattr(lp, field_name), "source", ""):
            return f"source {getattr(lp, field_name).source}"
    if lp.type == "Python":
        return f"Python module {lp.python_param.module or '?'}"
    return "its data"


def _input_tops(lp, first: bool, input_shape) -> list:
    """--input's shapes for a data layer's tops: the first data layer's top 0 is N x C x H x W;
    labels are N (classification sources) or N x 1 x H x W; ImageSegData's and a 3-top
    MemoryData's data_dim N x 1 x 1 x 2."""
    n, c, h, w = input_shape
    shapes = []
    for k in range(len(lp.top)):
        if first and k == 0:
            shapes.append((n, c, h, w))
        elif lp.type in DATA_DIM_TOPS and k == 2:
            shapes.append((n, 1, 1, 2))
        elif first and lp.type in PER_ITEM_LABELS:
            shapes.append((n,))
        else:
            shapes.append((n, 1, h, w))
    return shapes


def _replace_data_layers(net_param, kept, input_shape, input_tops: dict) -> dict[str, str]:
    """Make netinfo read no data: each data-producing layer kept for the phase becomes an Input
    layer with its tops' shapes, from ``input_tops`` (named tops), --input N,C,H,W (every data
    layer; the first one's top 0 is the image) or the prototxt; one that reads nothing to know
    them stays as it is unless --input gives its tops. Returns {layer name: original type} of
    the replaced layers."""
    data = [lp for lp in kept if _produces_data(lp)]
    if (input_shape is not None or input_tops) and not data:
        raise DeepLabError("--input given, but the net has no data layer (Input, ImageSegData, Data, ...)")
    produced = [t for lp in data for t in lp.top]
    unknown = [t for t in input_tops if t not in produced]
    if unknown:
        raise DeepLabError(f"--input names {', '.join(map(repr, unknown))}, which no data layer of this phase "
                           f"produces (their tops: {', '.join(produced)})")
    first = data[0] if data else None
    plan = {}
    for lp in data:
        base = None
        if input_shape is not None and (lp is first or lp.type not in READS_NOTHING):
            base = _input_tops(lp, lp is first, input_shape)
        elif lp.type not in READS_NOTHING:
            base = _prototxt_shapes(lp)
        named = [t for t in lp.top if t in input_tops]
        if named and base is None and len(named) < len(lp.top):
            rest = [t for t in lp.top if t not in input_tops]
            raise DeepLabError(f"layer {lp.name!r} ({lp.type}): --input gives {', '.join(named)} but not "
                               f"{', '.join(rest)}; give every top of the layer (TOP=SHAPE) or --input N,C,H,W")
        if named:
            plan[id(lp)] = [input_tops[t] if t in input_tops else base[k] for k, t in enumerate(lp.top)]
        elif base is not None:
            plan[id(lp)] = base
        elif lp.type not in READS_NOTHING:
            raise DeepLabError(f"layer {lp.name!r} ({lp.type}): its top shapes come from {_source_of(lp)}, "
                               f"which netinfo does not read; pass --input N,C,H,W (or TOP=SHAPE for each "
                               f"of {', '.join(lp.top)})")
    original = {}
    by_key = {(lp.name, tuple(lp.top)): plan[id(lp)] for lp in data if id(lp) in plan}
    for lp in net_param.layer:
        shapes = by_key.get((lp.name, tuple(lp.top)))
        if shapes is None:
            continue
        original[lp.name] = lp.type
        kept_rules = [(r.SerializeToString(), "include") for r in lp.include] + \
                     [(r.SerializeToString(), "exclude") for r in lp.exclude]
        name, tops = lp.name, list(lp.top)
        lp.Clear()
        lp.name, lp.type = name, "Input"
        lp.top.extend(tops)
        for blob, which in kept_rules:
            getattr(lp, which).add().ParseFromString(blob)
        for shape in shapes:
            lp.input_param.shape.add().dim.extend(int(d) for d in shape)
    return original


def describe(net) -> NetInfo:
    """NetInfo for an already built ``caffe.net.Net`` (any device, meta included)."""
    geometry: dict[str, tuple | None] = {}   # blob -> (stride pair, rf pair) or None
    shapes: dict[str, tuple] = {}
    layers = []
    seen: set[int] = set()
    total = 0
    for layer in net.layers:
        bottoms = [geometry.get(b) for b in layer.bottom_names]
        bottom_shapes = [shapes.get(b) for b in layer.bottom_names]
        tops_geo = _geometry(layer, bottoms, bottom_shapes)
        tops = []
        for i, (t, shape) in enumerate(zip(layer.top_names, layer.top_shapes)):
            g = tops_geo[i] if i < len(tops_geo) else None
            geometry[t] = g
            shapes[t] = tuple(shape)
            tops.append(BlobInfo(t, tuple(shape), *(g if g else (None, None))))
        count = 0
        param_shapes = []
        for p in layer.blobs:
            param_shapes.append(tuple(p.shape))
            count += p.numel()
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        layers.append(LayerInfo(layer.name, layer.type, list(layer.bottom_names), tops, count, param_shapes))
    phase = "TRAIN" if net.phase == 0 else "TEST"
    return NetInfo(net.name, phase, layers, list(net.input_names), list(net.output_names), total)


def _geometry(layer, bottoms: list, bottom_shapes: list) -> list:
    """Stride and receptive field of each top of ``layer`` from its bottoms' (see module doc)."""
    t = layer.type
    if layer.is_data:
        n = 2 if t in DATA_DIM_TOPS else len(layer.top_names)
        return [((1, 1), (1, 1)) if i < n and len(s) == 4 else None
                for i, s in enumerate(layer.top_shapes)]
    if not bottoms or any(b is None for b in bottoms):
        return []
    stride, rf = bottoms[0]
    if stride is None and t not in ("Eltwise", "Concat"):
        return [(None, rf)] if t in ("Padding", "Crop") or t in ELEMENTWISE else []
    if t in ("Convolution", "Pooling"):
        if t == "Pooling" and layer.global_pooling:
            size = bottom_shapes[0][2:4]
            if None in size:
                return []
            return [(None, tuple(r + (k - 1) * s for r, k, s in zip(rf, size, stride)))]
        dilation = layer.dilation if t == "Convolution" else (1, 1)
        keff = [d * (k - 1) + 1 for d, k in zip(dilation, layer.kernel)]
        return [(tuple(s * st for s, st in zip(stride, layer.stride)),
                 tuple(r + (k - 1) * s for r, k, s in zip(rf, keff, stride)))]
    if t == "Interp":
        return [_interp_geometry(layer, stride, rf, bottom_shapes[0])]
    if t in ("Padding", "Crop") or t in ELEMENTWISE:
        return [(stride, rf)] * max(1, len(layer.top_names))
    if t in ("Eltwise", "Concat"):
        strides = {b[0] for b in bottoms}
        fields = [b[1] for b in bottoms]
        widest = tuple(max(f[a] for f in fields) for a in range(2))
        return [(strides.pop() if len(strides) == 1 else None, widest)]
    return []


def _interp_geometry(layer, stride, rf, bottom_shape):
    """Interp: stride times (in - 1) / (out - 1); field + one input stride unless on-sample."""
    out = layer.top_shapes[0][2:4]
    ins = None if bottom_shape is None else bottom_shape[2:4]
    if ins is None or None in ins or None in out:
        return None
    new_stride, new_rf = [], []
    for a in range(2):
        size_in = ins[a] + layer.pad_beg + layer.pad_end
        ratio = Fraction(1) if out[a] <= 1 or size_in <= 1 else Fraction(size_in - 1, out[a] - 1)
        new_stride.append(_norm(stride[a] * ratio))
        new_rf.append(rf[a] if ratio.denominator == 1 else rf[a] + stride[a])
    return tuple(new_stride), tuple(new_rf)


def _norm(x):
    if isinstance(x, Fraction) and x.denominator == 1:
        return int(x)
    return x


def _pair_json(p):
    if p is None:
        return None
    return [None if v is None else (int(v) if Fraction(v).denominator == 1 else float(v)) for v in p]


def _num_text(v) -> str:
    if v is None:
        return "?"
    f = Fraction(v)
    return str(int(f)) if f.denominator == 1 else f"{float(f):.4g}"


def _pair_text(p) -> str:
    if p is None:
        return "-"
    h, w = (_num_text(v) for v in p)
    return h if h == w else f"{h}x{w}"


def _shape_text(shape) -> str:
    if shape is None:
        return "?"
    if len(shape) == 0:
        return "scalar"
    return "x".join("?" if d is None else str(d) for d in shape)
