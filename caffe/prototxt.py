"""Read Caffe prototxt files: ``${NAME}`` placeholders, parsing, and Caffe's upgrade to one form.

Every net, whatever syntax it was written in (V1 ``layers { type: CONVOLUTION }``, V2
``layer { type: "Convolution" }``, deprecated ``input``/``input_dim``), comes out as a V2
``NetParameter`` upgraded exactly as BVLC Caffe's ``UpgradeNetAsNeeded`` does, so the rest
of the engine only ever sees ``net.layer``. Errors name the file and line.
"""
from __future__ import annotations

import os
import re

from google.protobuf import text_format
from google.protobuf.message import Message

from . import CaffeError
from .proto import caffe_pb2 as pb

# ${NAME} or ${NAME:-default}; group 1 is NAME, group 2 the default (None without one)
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STRING_VALUE = re.compile(r"""([A-Za-z_]\w*)\s*:\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_V1 = pb.V1LayerParameter

# Caffe's UpgradeV1LayerType, plus the DeepLab fork's types.
V1_TYPE_NAMES: dict[int, str] = {
    _V1.NONE: "", _V1.ABSVAL: "AbsVal", _V1.ACCURACY: "Accuracy", _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL", _V1.CONCAT: "Concat", _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution", _V1.DECONVOLUTION: "Deconvolution", _V1.DATA: "Data",
    _V1.DROPOUT: "Dropout", _V1.DUMMY_DATA: "DummyData", _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise", _V1.EXP: "Exp", _V1.FLATTEN: "Flatten", _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output", _V1.HINGE_LOSS: "HingeLoss", _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData", _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct", _V1.LRN: "LRN", _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", _V1.MVN: "MVN",
    _V1.POOLING: "Pooling", _V1.POWER: "Power", _V1.RELU: "ReLU", _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax", _V1.SOFTMAX_LOSS: "SoftmaxWithLoss", _V1.SPLIT: "Split",
    _V1.SLICE: "Slice", _V1.TANH: "TanH", _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
    # DeepLab fork
    _V1.IMAGE_SEG_DATA: "ImageSegData", _V1.INTERP: "Interp", _V1.MAT_WRITE: "MatWrite",
    _V1.MAT_READ: "MatRead", _V1.SEG_ACCURACY: "SegAccuracy", _V1.PADDING: "Padding",
    _V1.DENSE_CRF: "DenseCRF", _V1.DOMINANT_CHANNEL: "DominantChannel",
    _V1.BIAS_CHANNEL: "BiasChannel", _V1.UNIQUE_LABEL: "UniqueLabel", _V1.CENSOR_LABEL: "CensorLabel",
    _V1.ADAPTIVE_BIAS_CHANNEL: "AdaptiveBiasChannel", _V1.CHANNEL_AGGREGATOR: "ChannelAggregator",
    _V1.IGNORE_OVERLAY: "IgnoreOverlay", _V1.HISTOGRAM: "Histogram", _V1.RELATIVE_ERROR: "RelativeError",
    _V1.GAIN_CHANNEL: "GainChannel", _V1.ONEHOT: "OneHot",
    # crfasrnn (torrvision/caffe upgrade_proto.cpp: CROP -> "Crop")
    _V1.CROP: "Crop", _V1.MULTI_STAGE_MEANFIELD: "MultiStageMeanfield",
}

# Caffe's UpgradeSolverType.
_SOLVER_TYPE_NAMES = {
    pb.SolverParameter.SGD: "SGD", pb.SolverParameter.NESTEROV: "Nesterov",
    pb.SolverParameter.ADAGRAD: "AdaGrad", pb.SolverParameter.RMSPROP: "RMSProp",
    pb.SolverParameter.ADADELTA: "AdaDelta", pb.SolverParameter.ADAM: "Adam",
}

# V1 fields UpgradeV1LayerParameter handles one by one; every other set field is a
# *_param sub-message copied under the same name.
_V1_SPECIAL = {"bottom", "top", "name", "include", "exclude", "type", "blobs", "param",
               "blob_share_mode", "blobs_lr", "weight_decay", "loss_weight", "layer"}


def fill_placeholders(text: str, mapping: dict[str, str] | None, filename: str) -> str:
    """Replace ``${NAME}`` with ``mapping[NAME]`` (what the release did with sed), and
    ``${NAME:-default}`` with ``mapping[NAME]`` or, without one, ``default`` (as the shell).

    Placeholders inside ``#`` comments are left alone; one outside a comment without a
    value raises ``CaffeError("FILE:LINE: placeholder ${NAME} has no value; ...")``.
    """
    mapping = mapping or {}
    out = []
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        code, comment = split_comment(line)

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in mapping and m.group(2) is not None:
                return m.group(2)
            if name not in mapping:
                raise CaffeError(f"{filename}:{lineno}: placeholder ${{{name}}} has no value; "
                                   f"pass --set {name}=...")
            return str(mapping[name])

        out.append(PLACEHOLDER.sub(repl, code) + comment)
    return "".join(out)


def placeholders(text: str) -> dict[str, set[str]]:
    """The ``${NAME}`` placeholders of a prototxt text outside ``#`` comments, each with the
    fields whose quoted string values it appears in (``source: "${LIST_DIR}/val.txt"`` gives
    {"LIST_DIR": {"source"}}); an appearance anywhere else (an unquoted value such as
    ``num_output: ${N}``) counts as the field ``""``."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        code = split_comment(line)[0]
        spans = [(m.start(2), m.end(2), m.group(1)) for m in _STRING_VALUE.finditer(code)]
        for m in PLACEHOLDER.finditer(code):
            field = next((f for a, b, f in spans if a < m.start() and m.end() < b), "")
            found.setdefault(m.group(1), set()).add(field)
    return found


def split_comment(line: str) -> tuple[str, str]:
    """Split a prototxt line at the first ``#`` that is not inside a quoted string."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[:i], line[i:]
        i += 1
    return line, ""


def _read_source(source: str | os.PathLike) -> tuple[str, str]:
    """Return ``(text, filename)`` for a path or an inline prototxt text."""
    if isinstance(source, str) and ("\n" in source or "{" in source):
        return source, "<string>"
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except FileNotFoundError:
        raise CaffeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CaffeError(f"{path}: cannot read: {e}") from None


def locate_layer(source, name: str) -> str | None:
    """``FILE:LINE`` of the layer called ``name`` in a prototxt path or text (None if unknown)."""
    if hasattr(source, "layer"):
        return None
    text, filename = _read_source(source)
    pattern = re.compile(r'(^|[{\s])name\s*:\s*["\']%s["\']' % re.escape(name))
    for lineno, line in enumerate(text.splitlines(), 1):
        if pattern.search(line.split("#", 1)[0]):
            return f"{filename}:{lineno}"
    return None


def _parse_text(text: str, message: Message, filename: str) -> None:
    """``text_format.Parse`` with errors turned into ``FILE:LINE:COL: message``."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        msg = str(e)
        # "L:C : 'the line': what" -> "what"; we print FILE:L:C ourselves.
        msg = re.sub(r"^\d+:\d+ : ", "", msg)
        msg = re.sub(r"^'.*?': (?=[A-Z])", "", msg)
        line, col = e.GetLine(), e.GetColumn()
        where = f"{filename}:{line}:{col}" if line is not None else filename
        raise CaffeError(f"{where}: {msg}") from None
    missing = message.FindInitializationErrors()  # proto2 `required` (MatWrite's prefix, ...)
    if missing:
        raise CaffeError(f"{filename}: missing required field {_describe_path(message, missing[0])}")


def _describe_path(message: Message, path: str) -> str:
    """``layers[3].mat_write_param.prefix`` -> ``mat_write_param.prefix in layer 'fc8_mat'``."""
    m = re.match(r"(layers?)\[(\d+)\]\.(.+)", path)
    if not m or not isinstance(message, pb.NetParameter):
        return path
    layer = getattr(message, m.group(1))[int(m.group(2))]
    return f"{m.group(3)} in layer {layer.name or '#' + str(int(m.group(2)) + 1)!r}"


def parse_net(source: str | os.PathLike, mapping: dict[str, str] | None = None) -> pb.NetParameter:
    """Parse a net prototxt (path or text), fill placeholders, upgrade to V2 ``layer`` form."""
    return _parse(source, mapping, pb.NetParameter(), upgrade_net)


def parse_solver(source: str | os.PathLike,
                 mapping: dict[str, str] | None = None) -> pb.SolverParameter:
    """Parse a solver prototxt; the deprecated ``solver_type`` enum becomes ``type``.

    Inline nets (``net_param``, ``train_net_param``, ``test_net_param``) are upgraded too.
    """
    return _parse(source, mapping, pb.SolverParameter(), upgrade_solver)


def _parse(source, mapping, message, upgrade):
    """Read, fill placeholders, parse into ``message`` and upgrade it in place."""
    text, filename = _read_source(source)
    _parse_text(fill_placeholders(text, mapping, filename), message, filename)
    upgrade(message, filename)
    return message


def format_net(net: pb.NetParameter) -> str:
    """The net as prototxt text (e.g. to print the upgraded form of an old file)."""
    return text_format.MessageToString(net)


def upgrade_solver(solver: pb.SolverParameter, filename: str = "<solver>") -> None:
    """Caffe's UpgradeSolverAsNeeded, in place: ``solver_type`` enum -> ``type`` string."""
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise CaffeError(f"{filename}: both solver_type (deprecated enum) and type are set; "
                               "keep only type")
        solver.type = _SOLVER_TYPE_NAMES[solver.solver_type]
        solver.ClearField("solver_type")
    for field in ("net_param", "train_net_param"):
        if solver.HasField(field):
            upgrade_net(getattr(solver, field), f"{filename} ({field})")
    for i, net in enumerate(solver.test_net_param):
        upgrade_net(net, f"{filename} (test_net_param {i})")


def upgrade_net(net: pb.NetParameter, filename: str = "<net>") -> None:
    """Caffe's UpgradeNetAsNeeded, in place: V1 -> V2 layers, input fields -> Input layer."""
    for layer in net.layers:
        if layer.HasField("layer"):
            raise CaffeError(
                f"{filename}: layer {layer.layer.name or layer.name!r} uses the V0 syntax "
                "(layers { layer { ... } }), which is not supported; convert the file with "
                "Caffe's upgrade_net_proto_text first")
    if net.layers and net.layer:
        raise CaffeError(f"{filename}: uses both `layer` and the deprecated `layers`; "
                           "use one syntax for the whole net")
    if net.layers:
        _upgrade_v1_data_transform(net)
        for v1 in net.layers:
            _upgrade_v1_layer(v1, net.layer.add())
        net.ClearField("layers")
    if len(net.input):
        _upgrade_input(net, filename)
    for layer in net.layer:
        # Caffe's UpgradeNetBatchNorm: old BatchNorm nets declared 3 frozen params.
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for p in layer.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0


def _upgrade_v1_data_transform(net: pb.NetParameter) -> None:
    """Caffe's UpgradeNetDataTransformation: scale/mean_file/crop_size/mirror move from the
    data layers' own parameters to transform_param (ImageSegData treated as ImageData)."""
    kinds = {_V1.DATA: "data_param", _V1.IMAGE_DATA: "image_data_param",
             _V1.WINDOW_DATA: "window_data_param", _V1.IMAGE_SEG_DATA: "image_data_param"}
    fields = ("scale", "mean_file", "crop_size", "mirror")

    def needs(layer: pb.V1LayerParameter) -> bool:
        if layer.type not in kinds or not layer.HasField(kinds[layer.type]):
            return False
        param = getattr(layer, kinds[layer.type])
        return any(param.HasField(f) for f in fields)

    if not any(needs(layer) for layer in net.layers):
        return
    for layer in net.layers:
        if layer.type not in kinds:
            continue
        param = getattr(layer, kinds[layer.type])
        transform = layer.transform_param
        param.SetInParent()
        transform.SetInParent()
        for f in fields:
            if param.HasField(f):
                setattr(transform, f, getattr(param, f))
                param.ClearField(f)


def _upgrade_v1_layer(v1: pb.V1LayerParameter, layer: pb.LayerParameter) -> None:
    """Caffe's UpgradeV1LayerParameter for one layer (fork parameters included)."""
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[v1.type]
    for blob in v1.blobs:
        layer.blobs.add().CopyFrom(blob)

    def param(i: int) -> pb.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param(i).share_mode = mode  # STRICT/PERMISSIVE have the same numbers in both enums
    for i, lr in enumerate(v1.blobs_lr):
        param(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field, value in v1.ListFields():
        if field.name in _V1_SPECIAL:
            continue
        if field.message_type is not None:
            getattr(layer, field.name).CopyFrom(value)
        else:
            setattr(layer, field.name, value)  # strict_dim


def _upgrade_input(net: pb.NetParameter, filename: str) -> None:
    """Caffe's UpgradeNetInput: ``input`` + ``input_shape``/``input_dim`` -> a first "Input"
    layer named "input"; a bare ``input`` (old caffemodels) is just dropped."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        n = len(net.input)
        if has_shape and len(net.input_shape) != n:
            raise CaffeError(f"{filename}: {n} input(s) but {len(net.input_shape)} input_shape")
        if not has_shape and len(net.input_dim) != 4 * n:
            raise CaffeError(f"{filename}: {n} input(s) need {4 * n} input_dim values "
                               f"(num, channels, height, width each), got {len(net.input_dim)}")
        layer = pb.LayerParameter(name="input", type="Input")
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        net.layer.insert(0, layer)  # first, as Caffe does, so layer order stays valid
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
