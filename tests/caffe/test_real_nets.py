"""Well-known Caffe nets of the segmentation era build and run on the engine.

The fixtures in tests/fixtures/real_nets/ are our own text with the published structure of
FCN-8s, Dilation8, DeepLab v2 ResNet-101 (ASPP), ResNet-50, GoogLeNet and CaffeNet (layer
sequence, kernels, strides, pads, dilations, crop offsets, widths). The real-width nets are
built on the meta device (nothing allocated): their parameter counts must equal the counts
bench/survey_nets.py got from the public files (bench/SURVEY.md), worked out by hand below,
and their output shapes the published ones. Forwards run the same structure with widths
divided by 16 (classifier widths kept) at small inputs, on random weights.
"""
from __future__ import annotations

import math

import pytest
import torch

from caffe.net import Net
from caffe.prototxt import parse_net
from conftest import FIXTURES
from deeplab.netinfo import net_info

NETS = FIXTURES / "real_nets"

VGG16_CONVS = (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 2 * 256 * 256
               + 256 * 512 + 2 * 512 * 512 + 3 * 512 * 512) * 9 + 2 * 64 + 2 * 128 + 3 * 256 + 6 * 512


def _bottleneck_stages(blocks, first_bias=True):
    """Parameters of a Caffe ResNet body (conv1 .. res5, no classifier): conv weights, Scale
    gamma/beta (2 per channel) and BatchNorm mean/var (2 per channel) + its factor (1 per layer)."""
    def bn(c):
        return 4 * c + 1
    total = 3 * 49 * 64 + (64 if first_bias else 0) + bn(64)
    cin = 64
    for n, reps in zip((64, 128, 256, 512), blocks):
        total += cin * 4 * n + bn(4 * n)                                     # branch1
        for i in range(reps):
            c = cin if i == 0 else 4 * n
            total += c * n + bn(n) + 9 * n * n + bn(n) + n * 4 * n + bn(4 * n)
        cin = 4 * n
    return total


def _googlenet():
    inception = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), (480, 192, 96, 208, 16, 48, 64),
                 (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
                 (528, 256, 160, 320, 32, 128, 128), (832, 256, 160, 320, 32, 128, 128),
                 (832, 384, 192, 384, 48, 128, 128)]
    total = 3 * 49 * 64 + 64 + 64 * 64 + 64 + 9 * 64 * 192 + 192
    for cin, c1, r3, c3, r5, c5, pp in inception:
        total += cin * c1 + cin * r3 + 9 * r3 * c3 + cin * r5 + 25 * r5 * c5 + cin * pp + c1 + r3 + c3 + r5 + c5 + pp
    return total + 1024 * 1000 + 1000


# The counts bench/survey_nets.py reports for the public files (see bench/SURVEY.md).
REAL_COUNTS = {
    # VGG-16 convs, fc6 7x7x512 -> 4096, fc7, score_fr, three score_pool/ skip convs to 21,
    # and the bias-free Deconvolutions 4x4, 4x4 and 16x16 (21x21 each).
    "fcn8s_voc": (134_489_759, VGG16_CONVS + 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 21 + 21
                  + 512 * 21 + 21 + 256 * 21 + 21 + 21 * 21 * (16 + 16 + 256)),
    # front end as FCN's (no skips) to 21 classes, then the context module 21-42-42-84-168-336-672-672-21.
    "dilation8_voc": (141_149_720, VGG16_CONVS + 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 21 + 21
                      + sum(9 * a * b + b for a, b in ((21, 42), (42, 42), (42, 84), (84, 168), (168, 336),
                                                        (336, 672), (672, 672))) + 672 * 21 + 21),
    # ResNet-101 body with conv1 without bias + 4 ASPP 3x3 classifiers 2048 -> 21 with bias.
    "deeplabv2_resnet101": (44_153_980, _bottleneck_stages((3, 4, 23, 3), first_bias=False) + 4 * (9 * 2048 * 21 + 21)),
    "resnet50": (25_610_269, _bottleneck_stages((3, 4, 6, 3)) + 2048 * 1000 + 1000),
    "googlenet": (6_998_552, _googlenet()),
    # conv1 11x11x3x96, conv2 5x5x48x256 (group 2), conv3 3x3x256x384, conv4/5 group 2, fc6 9216 -> 4096.
    "caffenet": (60_965_224, 363 * 96 + 96 + 25 * 48 * 256 + 256 + 9 * 256 * 384 + 384 + 9 * 192 * 384 + 384
                 + 9 * 192 * 256 + 256 + 9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000),
}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_width_parameter_count(name):
    published, by_hand = REAL_COUNTS[name]
    assert by_hand == published
    assert net_info(NETS / f"{name}.prototxt").total_params == published


def test_published_counts_are_the_known_ones():
    # ResNet-50: torchvision's 25,557,032 learnable weights, + 64 for the Caffe model's conv1
    # bias, + the BatchNorm statistics (mean and variance per channel, one factor per layer).
    layers = 1 + sum(1 + 3 * reps for reps in (3, 4, 6, 3))
    channels = 64 + sum(4 * n + reps * (n + n + 4 * n) for n, reps in zip((64, 128, 256, 512), (3, 4, 6, 3)))
    assert layers == 53
    assert REAL_COUNTS["resnet50"][0] - (2 * channels + layers) - 64 == 25_557_032
    # AlexNet: "60 million parameters" (Krizhevsky et al. 2012).
    assert math.isclose(REAL_COUNTS["caffenet"][0], 61e6, rel_tol=0.01)


def _narrow(name, size=None, factor=16):
    """The fixture with Convolution/Deconvolution/InnerProduct widths above 21 divided by
    ``factor`` and the input resized to ``size`` x ``size`` (batch 1)."""
    param = parse_net(NETS / f"{name}.prototxt")
    for lp in param.layer:
        p = lp.inner_product_param if lp.type == "InnerProduct" else lp.convolution_param
        if lp.type in ("Convolution", "Deconvolution", "InnerProduct") and p.num_output > 21 and p.num_output != 1000:
            p.num_output //= factor
        if lp.type == "Input":
            dims = lp.input_param.shape[0].dim
            dims[0] = 1
            if size:
                dims[2] = dims[3] = size
    return param


def _forward(param, seed=0):
    """Build on the CPU, give every blob random values (BatchNorm: mean 0, variance 1) and run."""
    torch.manual_seed(seed)
    net = Net(param, "TEST")
    with torch.no_grad():
        for layer in net.layers:
            if layer.type == "BatchNorm":
                layer.blobs[0].zero_()
                layer.blobs[1].fill_(1)
                layer.blobs[2].fill_(1)
            elif layer.type == "Scale":
                layer.blobs[0].fill_(1)
                layer.blobs[1].zero_()
            else:
                for b in layer.blobs:
                    fan_in = b[0].numel() if b.dim() > 1 else 1
                    b.normal_(0, math.sqrt(2 / fan_in) if b.dim() > 1 else 0.01)
        shape = net.blob_shapes["data"]
        x = torch.randn(shape) * 50
        return net, net.forward({"data": x}, outputs="all"), x


def test_fcn8s_shapes_and_crop_offsets():
    info = net_info(NETS / "fcn8s_voc.prototxt")
    shapes = {n: info.blob(n).shape[2] for n in ("pool5", "fc6", "upscore2", "score_pool4", "upscore_pool4",
                                                  "score_pool3", "upscore8", "score")}
    # 500 + 2*100 = 700 -> pools 350, 175, 88, 44, 22 (ceil); fc6 7x7 -> 16; deconv (n-1)*s + k.
    assert shapes == {"pool5": 22, "fc6": 16, "upscore2": 34, "score_pool4": 44, "upscore_pool4": 70,
                      "score_pool3": 88, "upscore8": 568, "score": 500}
    assert info.blob("score").shape == (1, 21, 500, 500)
    # FCN's coord_map: the input position of pixel 0 of each blob (stride s, position x):
    # conv k, pad p: x += s*((k-1)/2 - p); pool 2x2/2: x += s/2, s *= 2; deconv k, stride t: x -= s/t * (k-1)/2.
    x, s = 1 - 100, 1                    # conv1_1 (pad 100); the other 3x3 pad 1 convs keep x
    pos = {}
    for i in range(1, 6):
        x, s = x + s / 2, s * 2
        pos[f"pool{i}"] = (x, s)
    x = x + s * 3                        # fc6 7x7 pad 0
    x, s = x - s / 2 * 1.5, s / 2        # upscore2 4x4 stride 2
    assert (x - pos["pool4"][0]) / s == 5
    x, s = x - s / 2 * 1.5, s / 2        # upscore_pool4
    assert (x - pos["pool3"][0]) / s == 9
    x, s = x - s / 8 * 7.5, s / 8        # upscore8 16x16 stride 8
    assert (x, s) == (-31, 1)
    offsets = {lp.name: lp.crop_param.offset[0] for lp in parse_net(NETS / "fcn8s_voc.prototxt").layer
               if lp.type == "Crop"}
    assert offsets == {"score_pool4c": 5, "score_pool3c": 9, "score": 31}


def test_fcn8s_forward_small_input_crops_where_fcn_does():
    net, out, _ = _forward(_narrow("fcn8s_voc", 64))
    # 64 + 200 -> pools 132, 66, 33, 17, 9; fc6 3; upscore2 8, upscore_pool4 18, upscore8 152.
    assert out["upscore8"].shape == (1, 21, 152, 152)
    assert out["score"].shape == (1, 21, 64, 64)
    assert torch.isfinite(out["score"]).all() and out["score"].abs().sum() > 0
    assert torch.equal(out["score"], out["upscore8"][:, :, 31:95, 31:95])
    assert torch.equal(out["score_pool4c"], out["score_pool4"][:, :, 5:13, 5:13])
    assert torch.equal(out["score_pool3c"], out["score_pool3"][:, :, 9:27, 9:27])


def test_dilation8_canvas():
    info = net_info(NETS / "dilation8_voc.prototxt")
    # 900 unpadded: 896/2 = 448, 444/2 = 222, 216/2 = 108, conv4 102, conv5 (dilation 2) 90,
    # fc6 (7x7 dilation 4) 66; the context module keeps 66 (pad 33 then 64 lost).
    assert info.blob("conv5_3").shape[2:] == (90, 90)
    assert info.blob("fc-final").shape == (1, 21, 66, 66)
    assert info.blob("prob").shape == (1, 21, 66, 66)
    assert info.blob("ct_final").stride == (8, 8)


def test_dilation8_forward_small_input():
    _, out, _ = _forward(_narrow("dilation8_voc", 412))
    # 412: 408/2 = 204, 200/2 = 100, 94/2 = 47, 41, 29, fc6 5.
    assert out["prob"].shape == (1, 21, 5, 5)
    assert torch.isfinite(out["prob"]).all()
    assert torch.allclose(out["prob"].sum(1), torch.ones(1, 5, 5))


def test_deeplabv2_resnet101_output_and_forward():
    info = net_info(NETS / "deeplabv2_resnet101.prototxt")
    # 513: conv1 7x7/2 pad 3 -> 257, pool1 3x3/2 pad 1 -> 129, res3a stride 2 -> 65; res4/res5 dilated.
    assert info.blob("pool1").shape[2:] == (129, 129)
    assert info.blob("res5c").shape == (1, 2048, 65, 65)
    assert info.blob("fc1_voc12").shape == (1, 21, 65, 65)
    _, out, _ = _forward(_narrow("deeplabv2_resnet101", 65))
    # 65 -> 33 -> 17 -> 9
    assert out["fc1_voc12"].shape == (1, 21, 9, 9)
    assert torch.isfinite(out["fc1_voc12"]).all()


def test_resnet50_224_to_1000_and_forward():
    info = net_info(NETS / "resnet50.prototxt")
    assert info.blob("res5c").shape == (1, 2048, 7, 7)
    assert info.blob("prob").shape == (1, 1000)
    _, out, _ = _forward(_narrow("resnet50"))
    assert out["prob"].shape == (1, 1000)
    assert torch.isfinite(out["prob"]).all()
    assert torch.allclose(out["prob"].sum(), torch.tensor(1.0))


def test_googlenet_and_caffenet_forward():
    info = net_info(NETS / "googlenet.prototxt")
    assert info.blob("inception_5b/output").shape == (10, 1024, 7, 7)
    assert info.blob("prob").shape == (10, 1000)
    info = net_info(NETS / "caffenet.prototxt")
    assert info.blob("pool5").shape == (10, 256, 6, 6)
    for name in ("googlenet", "caffenet"):
        _, out, _ = _forward(_narrow(name))
        assert out["prob"].shape == (1, 1000)
        assert torch.isfinite(out["prob"]).all()
