"""Export a net the engine builds to ONNX and to PyTorch (``caffe export``, ``Net.export``).

The net is traced once with ``torch.export`` (batch and spatial axes dynamic where no layer
fixes them, ``Dim.AUTO``); that program is written as ``.pt2`` (``torch.export.save``), turned
into a plain ``nn.Module`` (:func:`to_module`) or handed to torch's ONNX exporter (opset 18).
Parameters are registered under Caffe names, ``<layer>.<blob index>`` (pycaffe's
``net.params[layer][i]``), so the module's ``state_dict`` and the ONNX initializers carry them;
ONNX values are named after the Caffe blobs they hold (a blob computed in place several times:
the last value has the blob's name, earlier ones ``<blob>/<layer>``).

Most layers trace as the engine runs them; :data:`EXPORT_FORMS` gives the others a form torch
can export: BatchNorm's statistics as tensor arithmetic, PReLU as ``prelu``, SegNet's
Upsample with pooling indices as ``max_unpool2d``. What cannot be exported is refused before
tracing, naming every such layer (:data:`REFUSED`). ``deploy`` turns a train/test definition into
a deploy one: data, loss, accuracy and output-writer layers dropped, an Input in front.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import CaffeError

OPSET = 18
ACCURACY_TYPES = ("Accuracy", "SegAccuracy")
WRITER_TYPES = ("MatWrite", "HDF5Output")

# type -> why it cannot be exported (a layer of a type not here exports as the engine runs it).
REFUSED = {
    "Python": "a Python layer is user code that torch's exporter cannot see into",
    "DenseCRF": "its permutohedral lattice builds data-dependent hash tables, which ONNX cannot express",
    "MultiStageMeanfield": "its permutohedral lattice builds data-dependent hash tables, which ONNX cannot express",
    "MatWrite": "it writes files (--deploy drops it)",
    "HDF5Output": "it writes files (--deploy drops it)",
    "Embed": "it checks its indices against input_dim in data-dependent code torch.export cannot trace",
    "ArgMax": "torch 2.13's ONNX exporter fails to translate its top-k",
    "RNN": "its time loop reads sizes torch.export cannot trace",
    "LSTM": "its time loop reads sizes torch.export cannot trace",
}
# The DeepLab fork's weak-supervision layers (training-time label and bias manipulations) and
# MatRead: no export of theirs has been checked against the engine, so none is offered.
REFUSED.update({t: "the fork's weak-supervision / file-reading layers are not checked for export"
                for t in ("AdaptiveBiasChannel", "BiasChannel", "CensorLabel", "ChannelAggregator",
                          "DominantChannel", "GainChannel", "Histogram", "IgnoreOverlay", "MatRead",
                          "OneHot", "RelativeError", "UniqueLabel")})


def refusal(layer) -> str | None:
    """Why ``layer`` (an engine layer) cannot be exported, or None."""
    why = _type_refusal(type(layer), layer.type)
    if why:
        return why
    if layer.type == "Pooling" and layer.method == 2 and layer.training:
        return "STOCHASTIC pooling in TRAIN draws random numbers"
    if layer.type == "Dropout" and (layer.training or layer.sample_test) and layer.ratio:
        return "its dropout draws random numbers in this phase (sample_weights_test or TRAIN)"
    return None


def _type_refusal(cls, type_name: str) -> str | None:
    """Why every layer of this class cannot be exported, or None."""
    if type_name in REFUSED:
        return REFUSED[type_name]
    if cls.is_data and type_name != "Input":
        return "a data layer reads files (--deploy replaces it by an Input)"
    if cls.is_loss or type_name in ACCURACY_TYPES:
        return "a loss/accuracy layer needs labels (--deploy drops it)"
    return None


def check_definition(param, phase: str = "TEST", level: int = 0, stages=()) -> None:
    """Refuse, before building the net, a definition with layers that cannot be exported,
    naming them all on one line."""
    from .layer import layer_class
    from .net import PHASES, filter_layers
    bad = []
    for lp in filter_layers(param, PHASES[phase], level, list(param.state.stage) + list(stages)):
        why = _type_refusal(layer_class(lp), lp.type)
        if why:
            bad.append(f"layer {lp.name!r} ({lp.type}): {why}")
    if bad:
        raise CaffeError("cannot export " + "; ".join(bad))


def exportable_types() -> list[str]:
    """The registered layer types that export (every type not refused as a whole), sorted."""
    from .layer import REGISTRY
    return sorted((t for t, cls in REGISTRY.items() if _type_refusal(cls, t) is None), key=str.lower)


# ------------------------------------------------------------------ exportable forms
EXPORT_FORMS: dict = {}


def export_form(*types: str):
    """Register ``fn(layer, *bottoms) -> tops`` as the traced form of layers of ``types``."""
    def wrap(fn):
        for t in types:
            EXPORT_FORMS[t] = fn
        return fn
    return wrap


@export_form("BatchNorm")
def _batch_norm(layer, x):
    """Caffe's BatchNorm with global statistics: mean and variance are blob / scale factor
    (0 when the factor is 0), computed in the graph so the blobs stay initializers."""
    if not layer.use_global:
        return layer(x)
    view = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 1 else (-1,)
    s = layer.blobs[2].reshape(())
    factor = torch.where(s == 0, torch.zeros_like(s), 1.0 / torch.where(s == 0, torch.ones_like(s), s))
    mean, var = layer.blobs[0] * factor, layer.blobs[1] * factor
    return ((x - mean.reshape(view)) / torch.sqrt(var + layer.eps).reshape(view),)


@export_form("PReLU")
def _prelu(layer, x):
    """PReLU as torch's prelu (ONNX PRelu), the slope per channel or shared."""
    return (F.prelu(x, layer.blobs[0].reshape(-1)),)


@export_form("Pooling")
def _pooling(layer, x):
    """MAX/AVE pooling as torch's pooling (ONNX MaxPool/AveragePool, ceil_mode) whenever its
    windows are Caffe's for every input size: pad at most half the kernel, and (padding, or
    kernel >= stride on both axes) — then torch's rule for the last window (drop one starting
    in the right padding) is Caffe's, and no window starts past the image. Otherwise the
    engine's form, which fixes the spatial size."""
    k, s, p = layer.kernel, layer.stride, layer.pad
    same = (not layer.global_pooling and layer.method in (0, 1) and p[0] <= k[0] // 2 and p[1] <= k[1] // 2
            and (p[0] or p[1] or (k[0] >= s[0] and k[1] >= s[1])))
    if not same:
        return layer(x)
    ceil = layer.round_mode == 0
    if layer.method == 1:
        return (F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=True),)
    if layer.top_count == 1:
        return (F.max_pool2d(x, k, s, p, ceil_mode=ceil),)
    y, idx = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
    return y, idx.to(x.dtype)


@export_form("Upsample")
def _upsample(layer, x, mask):
    """SegNet's Upsample. The fork fixes the top size at the first shape it sees, so the
    export does too (a size check ties the input's spatial size). When the mask comes from
    a MAX Pooling whose windows tile the plane (kernel = stride = the scale, no pad), each
    value can only land in its own window: the top is the nearest-neighbour enlargement of
    the values, kept where the enlarged mask equals the position's index (Resize, Equal,
    Where: runs on onnxruntime and OpenCV alike); otherwise max-unpooling (MaxUnpool's
    scatter, onnxruntime only)."""
    n, c, h, w = x.shape
    oh, ow = layer.size
    scale = getattr(layer, "scale", None)
    if scale is not None and (h * scale[0] - layer.pad_out[0] != oh or w * scale[1] - layer.pad_out[1] != ow):
        raise layer.error(f"the fork fixed the top size at {oh}x{ow}; this input gives another")
    index = getattr(layer, "export_index", None)
    if index is not None:
        up_x = F.interpolate(x, scale_factor=scale, mode="nearest")[:, :, :oh, :ow]
        up_mask = F.interpolate(mask, scale_factor=scale, mode="nearest")[:, :, :oh, :ow]
        return (torch.where(up_mask == index, up_x, torch.zeros_like(up_x)),)
    kernel = scale or (-(-oh // h), -(-ow // w))
    return (F.max_unpool2d(x, mask.to(torch.int64), kernel_size=kernel, output_size=(oh, ow)),)


# ------------------------------------------------------------------ the exportable module
def _module_name(name: str, taken: set) -> str:
    """A submodule name for a Caffe layer name: '.' (torch's path separator) becomes '_',
    a name nn.Module uses or one already taken gets a '#k' suffix."""
    base = name.replace(".", "_") or "_"
    out, k = base, 1
    while out in taken or hasattr(nn.Module, out):
        k += 1
        out = f"{base}#{k}"
    taken.add(out)
    return out


class Graph(nn.Module):
    """The net's layers run in order on positional inputs (the net's input blobs), returning
    its output blobs; each layer's blobs are registered as ``<layer>.<i>``. With ``every_top``
    every top each layer computes is returned too (for naming ONNX values)."""

    def __init__(self, net, every_top: bool = False):
        super().__init__()
        bad = [(layer, refusal(layer)) for layer in net.layers]
        bad = [(layer, why) for layer, why in bad if why]
        if bad:
            raise CaffeError("cannot export " + "; ".join(f"layer {layer.name!r} ({layer.type}): {why}"
                                                          for layer, why in bad))
        object.__setattr__(self, "_layers", [layer for layer in net.layers if not layer.is_data])
        taken: set = set()
        for layer in net.layers:
            if len(layer.blobs):
                self.add_module(_module_name(layer.name, taken), layer.blobs)
        self._tiling_unpools(net)
        self.input_names = list(net.input_names)
        self.output_names = list(net.output_names)
        self.every_top = every_top
        self.values = [(t, layer.name) for layer in self._layers for t in layer.top_names]

    def _tiling_unpools(self, net) -> None:
        """Give each Upsample whose mask comes from a tiling MAX Pooling (kernel = stride =
        its scale, no pad) the index of every top position (``export_index``, a constant)."""
        producer = {}
        for layer in net.layers:
            for t in layer.top_names:
                producer[t] = layer
        for layer in net.layers:
            if layer.type != "Upsample":
                continue
            pool = producer.get(layer.bottom_names[1])
            scale = getattr(layer, "scale", None)
            tiles = (pool is not None and pool.type == "Pooling" and scale is not None and not pool.global_pooling
                     and tuple(pool.kernel) == tuple(pool.stride) == tuple(scale) and tuple(pool.pad) == (0, 0))
            index = None
            if tiles:
                oh, ow = layer.size
                index = torch.arange(oh * ow, dtype=torch.float32).reshape(1, 1, oh, ow)
                self.register_buffer(f"_unpool_index_{len(self._buffers)}", index, persistent=False)
            layer.export_index = index

    def forward(self, *inputs):
        blobs = dict(zip(self.input_names, inputs))
        every = []
        for layer in self._layers:
            bottoms = [blobs[b] for b in layer.bottom_names]
            form = EXPORT_FORMS.get(layer.type)
            tops = form(layer, *bottoms) if form is not None else layer(*bottoms)
            for t, v in zip(layer.top_names, tops):
                blobs[t] = v
            every.extend(tops)
        outputs = tuple(blobs[o] for o in self.output_names)
        return outputs + tuple(every) if self.every_top else outputs


def _example_inputs(net, dynamic: bool) -> list[torch.Tensor]:
    """Random inputs of the net's input shapes; for a dynamic trace batch 2 where it is 1
    (torch.export fixes an axis traced at size 1)."""
    out = []
    for name in net.input_names:
        shape = list(net.blob_shapes[name])
        if any(d is None for d in shape):
            raise CaffeError(f"input {name!r} has no fixed shape {tuple(shape)}; give one (--shape={name}:1,3,H,W)")
        if dynamic and shape and shape[0] == 1:
            shape[0] = 2
        out.append(torch.randn(shape))
    return out


def export_program(net, dynamic: bool = True, every_top: bool = False):
    """``torch.export`` of the net (a caffe.net.Net, TEST phase). With ``dynamic`` the batch
    and spatial axes of the inputs are dynamic where the layers allow: traced with
    ``Dim.AUTO``, and traced again with fewer dynamic axes (batch only, then none) while a
    guard ties an input size to a number or to another size (a layer whose Python code
    fixed it), since ONNX would not keep such a guard."""
    graph = Graph(net, every_top).eval()
    levels = [(0, 2, 3), (0,), ()] if dynamic else [()]
    for axes in levels:
        inputs = _example_inputs(net, bool(axes))
        auto = torch.export.Dim.AUTO
        shapes = (tuple({i: auto for i in axes if i < x.dim()} for x in inputs),)   # one entry: *inputs
        try:
            with torch.no_grad():
                program = torch.export.export(graph, tuple(inputs), dynamic_shapes=shapes if axes else None,
                                              strict=False)
        except Exception as e:   # torch's own message names the op; say which layer holds it
            if axes:
                continue   # a symbolic size torch cannot reason about: fewer dynamic axes
            if isinstance(e, CaffeError):
                raise
            raise CaffeError(f"torch.export failed in {_culprit(net, e)}") from None
        if not axes or not _ties_sizes(program):
            return program
    return program


def _ties_sizes(program) -> bool:
    """Whether the program holds only for some input sizes: a guard equating a size."""
    return any("==" in g and ".size()[" in g for g in getattr(program, "_guards_code", None) or [])


def _culprit(net, error) -> str:
    """The first layer that does not export alone (each traced on its bottoms' shapes), or
    the exporter's first line."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    for layer in net.layers:
        if layer.is_data:
            continue
        shapes = [net.blob_shapes[b] for b in layer.bottom_names]
        if any(d is None for s in shapes for d in s):
            continue
        form = EXPORT_FORMS.get(layer.type)

        class One(nn.Module):
            def forward(self, *xs):
                return form(layer, *xs) if form is not None else layer(*xs)
        try:
            with torch.no_grad():
                torch.export.export(One(), tuple(torch.randn(s) for s in shapes), strict=False)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"layer {layer.name!r} ({layer.type}): {msg}"
    return f"the net: {first}"


def to_module(net, dynamic: bool = True) -> nn.Module:
    """The net as a plain ``nn.Module`` (torch.export's GraphModule, no class of this
    package in it): ``module(*inputs)`` returns the output blobs in ``net.output_names``
    order; its ``state_dict`` is keyed ``<layer>.<i>``. To keep it in a file, write the
    program (:func:`export_torch`, ``.pt2``): ``torch.export.load(path).module()`` needs
    neither the prototxt nor this package."""
    return export_program(net, dynamic).module()


# ------------------------------------------------------------------ ONNX
def _rename_values(model, graph: Graph, input_names: list[str]) -> None:
    """Give the ONNX values the Caffe blob names, keep only the net's outputs as graph
    outputs, and drop nodes nothing reads any more. The exported graph returned the net's
    outputs, then every top of every layer (``graph.values``), in order."""
    g = model.graph
    n_out = len(graph.output_names)
    outputs = [copy_value(o) for o in g.output]
    if len(outputs) != n_out + len(graph.values):
        raise CaffeError(f"the ONNX exporter returned {len(outputs)} outputs for {n_out + len(graph.values)} values")
    last = {t: i for i, (t, _) in enumerate(graph.values)}
    rename = dict(zip([v.name for v in g.input], input_names))
    used = set(input_names) | {i.name for i in g.initializer}
    for i, (t, layer) in enumerate(graph.values):
        old, new = outputs[n_out + i].name, t if last[t] == i else f"{t}/{layer}"
        if old in rename or old in used or new in used:
            continue   # the same value as an earlier blob (a layer handing back its bottom)
        rename[old] = new
        used.add(new)
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    for v in list(g.input) + list(g.value_info):
        v.name = rename.get(v.name, v.name)
    del g.output[:]
    for o in graph.output_names:
        v = outputs[n_out + last[o]] if o in last else outputs[graph.output_names.index(o)]
        value = rename.get(v.name, v.name)
        if value != o:   # the blob's value also holds another blob: name it o as well
            g.node.add(op_type="Identity", input=[value], output=[o], name=f"{o}/output")
        v.name = o
        g.output.append(v)
    _drop_dead_nodes(g)


def copy_value(v):
    """A detached copy of an ONNX ValueInfoProto."""
    out = type(v)()
    out.CopyFrom(v)
    return out


def _drop_dead_nodes(g) -> None:
    needed = {o.name for o in g.output}
    alive = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(x for x in node.input if x)
    alive.reverse()
    del g.node[:]
    g.node.extend(alive)
    names = needed
    init = [i for i in g.initializer if i.name in names]
    del g.initializer[:]
    g.initializer.extend(init)
    info = [v for v in g.value_info if v.name in names]
    del g.value_info[:]
    g.value_info.extend(info)


def export_onnx(net, path: str, dynamic: bool = True, opset: int = OPSET) -> dict:
    """Write the net as ONNX (``opset``): inputs and values named by Caffe blob, weights
    ``<layer>.<i>``, axes dynamic as :func:`export_program` leaves them. Returns
    {"inputs": {name: shape with axis names}, "outputs": [...]}."""
    try:
        import onnx
    except ImportError:
        raise CaffeError("ONNX export needs the onnx and onnxscript packages (pip install onnx onnxscript)") from None
    program = export_program(net, dynamic, every_top=True)
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=opset, verbose=False)
    except ImportError as e:
        raise CaffeError(f"ONNX export needs onnxscript (pip install onnxscript): {e}") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CaffeError(f"torch's ONNX exporter failed: {first}") from None
    model = onnx_program.model_proto
    _rename_values(model, Graph(net, every_top=True), list(net.input_names))
    axes = {}
    for v in model.graph.input:
        dims = v.type.tensor_type.shape.dim
        named = ("batch", "channels", "height", "width") if len(dims) == 4 else ("batch",)
        for k, d in enumerate(dims):
            if d.dim_param and k < len(named):
                d.dim_param = named[k]
        axes[v.name] = tuple(d.dim_param or d.dim_value for d in dims)
    onnx.checker.check_model(model)
    from .util.files import atomic_path
    with atomic_path(path) as tmp:
        onnx.save(model, tmp)
    return {"inputs": axes, "outputs": [o.name for o in model.graph.output]}


def export_torch(net, path: str, dynamic: bool = True) -> None:
    """Write the net as a ``torch.export`` program (``.pt2``; ``torch.export.load(path).module()``)."""
    program = export_program(net, dynamic)
    from .util.files import atomic_path
    with atomic_path(path) as tmp:
        torch.export.save(program, tmp)


# ------------------------------------------------------------------ deploy
@dataclass
class Deploy:
    """A deploy NetParameter and what was changed to make it."""
    param: object
    dropped: list = field(default_factory=list)      # "name (Type)" of each dropped layer
    inputs: dict = field(default_factory=dict)       # Input top -> shape


def deploy(param, shapes: dict | None = None, phase: str = "TEST", level: int = 0, stages=()) -> Deploy:
    """A train/test NetParameter as a deploy one: the layers of ``phase``; data layers other
    than Input replaced by one Input in front with their image tops (shape from ``shapes``,
    else the data layer's own); loss, accuracy, MatWrite and HDF5Output layers dropped, and
    every layer left without its bottoms (e.g. a label shrink)."""
    from .layer import layer_class, make_layer
    from .net import PHASES, filter_layers
    from .proto import caffe_pb2 as pb
    shapes = dict(shapes or {})
    kept, dropped, inputs = [], [], {}
    available: set = set()
    for lp in filter_layers(param, PHASES[phase], level, list(param.state.stage) + list(stages)):
        cls = layer_class(lp)
        if cls.is_data and lp.type != "Input":
            dropped.append(f"{lp.name} ({lp.type})")
            for i, top in enumerate(lp.top):
                if i in cls.label_tops:
                    continue
                if top not in shapes:
                    try:
                        built = make_layer(lp, [], "TEST").top_shapes[i]
                    except CaffeError as e:
                        raise CaffeError(f"layer {lp.name!r} ({lp.type}): cannot tell the shape of its top {top!r} "
                                         f"({e}); give it with --shape={top}:N,C,H,W") from None
                    if any(d is None for d in built):
                        raise CaffeError(f"layer {lp.name!r} ({lp.type}): its top {top!r} has no fixed shape "
                                         f"{tuple(built)}; give it with --shape={top}:N,C,H,W")
                    shapes[top] = tuple(built)
                inputs[top] = tuple(shapes[top])
                available.add(top)
            continue
        if cls.is_loss or lp.type in ACCURACY_TYPES or lp.type in WRITER_TYPES:
            dropped.append(f"{lp.name} ({lp.type})")
            continue
        if any(b not in available for b in lp.bottom):
            dropped.append(f"{lp.name} ({lp.type})")
            continue
        if lp.type == "Input":
            for top, shape in zip(lp.top, lp.input_param.shape):
                if top in shapes:
                    del shape.dim[:]
                    shape.dim.extend(int(d) for d in shapes[top])
        kept.append(lp)
        available.update(lp.top)
    unknown = set(shapes) - set(inputs) - {t for lp in kept if lp.type == "Input" for t in lp.top}
    if unknown:
        raise CaffeError(f"--shape names {sorted(unknown)}, which are not data tops of the net")
    out = pb.NetParameter()
    out.name = param.name
    if inputs:
        lp = out.layer.add(name="input", type="Input")
        for top, shape in inputs.items():
            lp.top.append(top)
            lp.input_param.shape.add().dim.extend(int(d) for d in shape)
    for lp in kept:
        new = out.layer.add()
        new.CopyFrom(lp)
        del new.include[:]
        del new.exclude[:]
    return Deploy(out, dropped, inputs)


def parse_shapes(text: str) -> dict:
    """``--shape``: ``name:N,C,H,W`` items separated by ';' (a single item may omit
    ``name:``, meaning ``data``)."""
    shapes = {}
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, sep, dims = item.rpartition(":")
        try:
            shapes[name if sep else "data"] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise CaffeError(f"--shape: {item!r} is not name:N,C,H,W (whole numbers)") from None
    return shapes


def export(net, onnx: str | None = None, torch_path: str | None = None, dynamic: bool = True) -> dict:
    """Write ``onnx`` and/or ``torch_path`` (.pt2) for an engine net; returns what export_onnx
    returned (or {})."""
    if not onnx and not torch_path:
        raise CaffeError("nothing to write: give an ONNX path and/or a torch (.pt2) path")
    report = {}
    if onnx:
        report = export_onnx(net, os.fspath(onnx), dynamic)
    if torch_path:
        export_torch(net, os.fspath(torch_path), dynamic)
    return report


def run_command(flags, log) -> int:
    """``caffe export``: --model (+ --weights) to --onnx and/or --torch; --deploy first turns
    a train/test definition into a deploy one (--shape gives its Input shapes)."""
    from .net import Net
    from .prototxt import parse_net
    if not flags["model"]:
        raise CaffeError("need a model definition to export (--model=deploy.prototxt)")
    if not flags["onnx"] and not flags["torch"]:
        raise CaffeError("nothing to write: give --onnx=out.onnx and/or --torch=out.pt2")
    if not os.path.isfile(flags["model"]):
        raise CaffeError(f"--model: no such file {flags['model']}")
    param = parse_net(flags["model"])
    phase = flags["phase"] or "TEST"
    stages = [s for s in str(flags["stage"]).split(",") if s]
    shapes = parse_shapes(str(flags["shape"]))
    if flags["deploy"]:
        made = deploy(param, shapes, phase, flags["level"], stages)
        log("export.py:0", "Deploy: dropped " + (", ".join(made.dropped) or "nothing") + "; Input "
            + ", ".join(f"{t} {'x'.join(map(str, s))}" for t, s in made.inputs.items()))
        param, stages = made.param, []
    elif shapes:
        made = deploy(param, shapes, phase, flags["level"], stages)   # only to resize Input layers
        if made.dropped:
            raise CaffeError("--shape without --deploy resizes Input layers only; this net has "
                             + ", ".join(made.dropped) + " (give --deploy)")
        param, stages = made.param, []
    check_definition(param, phase, flags["level"], stages)
    net = Net(param, phase, level=flags["level"], stages=stages)
    for w in (w for w in str(flags["weights"]).split(",") if w):
        if not os.path.isfile(w):
            raise CaffeError(f"--weights: no such file {w}")
        report = net.copy_from(w)
        log("export.py:0", f"Copied {len(report['copied'])} layers' weights from {w}")
    report = export(net, flags["onnx"] or None, flags["torch"] or None)
    for path in (flags["onnx"], flags["torch"]):
        if path:
            log("export.py:0", f"Wrote {path}")
    if report:
        log("export.py:0", "Inputs " + "; ".join(f"{k} ({', '.join(map(str, v))})" for k, v in report["inputs"].items())
            + "; outputs " + ", ".join(report["outputs"]))
    return 0


def export_type_list() -> str:
    """README's paragraph of the layer types that export and those refused (``python -m caffe.export``)."""
    from .layer import REGISTRY
    ok = exportable_types()
    refused = sorted(set(REGISTRY) - set(ok), key=str.lower)
    return (f"{len(ok)} of {len(REGISTRY)} layer types export: " + ", ".join(f"`{t}`" for t in ok)
            + ". Refused (data, loss and accuracy layers go with `--deploy`): "
            + ", ".join(f"`{t}`" for t in refused) + ".")


if __name__ == "__main__":
    print(export_type_list())
