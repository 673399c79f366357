"""The nets the speed comparisons run (bench_peers.py, bench_threads.py), as deploy nets.

Each is a TEST-phase NetParameter with an Input layer in front (what OpenCV's Caffe importer
and ``caffe time`` read), its input shape and the blob compared between engines; weights are
random (bench/reference.py's randomize, or tests/caffe/test_export.py's for BatchNorm, BN, Scale
and PReLU), so nothing is downloaded:

  largefov   the release's DeepLab-LargeFOV test net (prototxt/voc12), up to fc8 and Interp x8
  narrow     the same net with every width divided by 8 and held to 8..128 channels (41
             layers of small convolutions and poolings: per-layer costs dominate)
  fcn8s      FCN-8s (tests/fixtures/real_nets/fcn8s_voc.prototxt, crops and deconvolutions)
  segnet     SegNet-Basic (the Bayesian SegNet-Basic fixture without its Monte Carlo dropout:
             BN, pooling masks, Upsample)
  resnet50   ResNet-50 (BatchNorm + Scale)
  enet       the ENet-structured fixture tests/fixtures/export/enet_small.prototxt (PReLU, BN,
             dilated and asymmetric convolutions, Upsample; fewer blocks and channels than the
             published ENet, which is not in the repository)
"""
from __future__ import annotations

import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from caffe import export as ex  # noqa: E402
from caffe.prototxt import V1_TYPE_NAMES, parse_net  # noqa: E402
from caffe.proto import caffe_pb2 as pb  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
LARGEFOV = os.path.join(ROOT, "prototxt", "voc12", "DeepLab-LargeFOV", "test.prototxt")
MAPPING = {"DATA_ROOT": ".", "LIST_DIR": ".", "TEST_SET": "bench", "FEATURE_DIR": ".", "NUM_LABELS": "21", "EXP": "."}

# name -> default input (H, W)
NETS = {"largefov": (321, 321), "narrow": (321, 321), "fcn8s": (500, 500), "segnet": (360, 480),
        "resnet50": (224, 224), "enet": (512, 1024)}


def _largefov(narrow: bool):
    param = parse_net(LARGEFOV, MAPPING)
    if narrow:
        for lp in param.layer:
            p = lp.convolution_param
            if lp.type == "Convolution" and p.num_output > 21:
                p.num_output = max(8, min(128, p.num_output // 8))
    return param


def _drop(param, types):
    keep = [lp for lp in param.layer if lp.type not in types]
    del param.layer[:]
    param.layer.extend(keep)
    return param


def deploy_param(name: str, hw: tuple[int, int]):
    """The deploy NetParameter of ``name`` for a 1 x 3 x H x W input."""
    shape = (1, 3) + tuple(hw)
    if name in ("largefov", "narrow"):
        param = _largefov(name == "narrow")
    elif name == "fcn8s":
        param = parse_net(os.path.join(FIXTURES, "real_nets", "fcn8s_voc.prototxt"))
    elif name == "resnet50":
        param = parse_net(os.path.join(FIXTURES, "real_nets", "resnet50.prototxt"))
    elif name == "segnet":
        param = _drop(parse_net(os.path.join(FIXTURES, "segnet", "bayesian_segnet_basic_inference.prototxt")),
                      ("Dropout",))
    elif name == "enet":
        param = parse_net(os.path.join(FIXTURES, "export", "enet_small.prototxt"))
    else:
        raise SystemExit(f"unknown net {name!r} (known: {', '.join(NETS)})")
    # the deploy transform: an Input of this shape in front, data/loss/MatWrite layers dropped
    return ex.deploy(param, {"data": shape}).param


@torch.no_grad()
def randomize(net, seed: int = 0) -> None:
    """Random blobs that keep activations in range (He-normal convolutions; BatchNorm
    statistics, BN/Scale/PReLU parameters near their roles), as tests/caffe/test_export.py."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, lo, hi):
        return torch.rand(shape, generator=gen) * (hi - lo) + lo
    for layer in net.layers:
        b = layer.blobs
        if layer.type == "BatchNorm":
            b[2].fill_(2.0)
            b[0].copy_(torch.randn(b[0].shape, generator=gen) * 0.2)
            b[1].copy_(rand(b[1].shape, 1.0, 4.0))
        elif layer.type in ("Scale", "BN") and len(b):
            b[0].copy_(rand(b[0].shape, 0.5, 1.5))
            if len(b) > 1:
                b[1].copy_(torch.randn(b[1].shape, generator=gen) * 0.1)
        elif layer.type == "PReLU":
            b[0].copy_(rand(b[0].shape, 0.0, 0.5))
        elif len(b):
            b[0].copy_(torch.randn(b[0].shape, generator=gen) * math.sqrt(2.0 / max(b[0][0].numel(), 1)))
            if len(b) > 1:
                b[1].copy_(torch.randn(b[1].shape, generator=gen) * 0.01)


def build(name: str, hw: tuple[int, int] | None = None):
    """(net, input tensor, output blob): the engine's net of ``name`` with random weights."""
    from caffe.net import Net
    hw = tuple(hw or NETS[name])
    net = Net(deploy_param(name, hw), "TEST")
    randomize(net)
    scale = 1.0 if name == "enet" else 40.0     # ENet's softmax saturates on large inputs
    x = torch.randn((1, 3) + hw, generator=torch.Generator().manual_seed(1)) * scale
    return net, x, net.output_names[0]


_V1_TYPE = {name: value for value, name in V1_TYPE_NAMES.items() if name}
_V1_PARAMS = ("convolution_param", "pooling_param", "dropout_param", "inner_product_param",
              "eltwise_param", "concat_param", "relu_param", "softmax_param", "interp_param")


def v1_param(param):
    """The deploy net ``param`` in the V1 syntax of 2014-15 Caffe builds such as the DeepLab
    fork (``layers { type: CONVOLUTION }``, the input as net-level ``input``/``input_dim``,
    dilation as the fork's ``hole``). ValueError names a layer the V1 syntax cannot say."""
    v1 = pb.NetParameter(name=param.name)
    for lp in param.layer:
        if lp.type == "Input":
            for top, shape in zip(lp.top, lp.input_param.shape):
                v1.input.append(top)
                v1.input_dim.extend(shape.dim)
            continue
        if lp.type not in _V1_TYPE:
            raise ValueError(f"layer {lp.name!r}: type {lp.type} has no V1 name")
        layer = v1.layers.add(name=lp.name, type=_V1_TYPE[lp.type], bottom=lp.bottom, top=lp.top)
        for field in _V1_PARAMS:
            if lp.HasField(field):
                getattr(layer, field).CopyFrom(getattr(lp, field))
        conv = layer.convolution_param
        if layer.HasField("convolution_param"):
            dilation = list(conv.dilation)
            if dilation:
                if len(set(dilation)) > 1:
                    raise ValueError(f"layer {lp.name!r}: per-axis dilation has no V1 form")
                del conv.dilation[:]
                conv.hole = dilation[0]
            for name in ("kernel_size", "stride", "pad"):      # V1 fields are scalars
                values = list(getattr(conv, name))
                if len(set(values)) > 1:
                    raise ValueError(f"layer {lp.name!r}: per-axis {name} has no V1 form")
                if values:
                    del getattr(conv, name)[:]
                    getattr(conv, name).append(values[0])
    return v1
