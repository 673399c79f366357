"""The paper's network definitions in prototxt/voc12: structure, placeholders, and forwards.

Full-size nets are built on the meta device (deeplab.netinfo), so nothing big is allocated;
forwards run on width-reduced copies at small, alignment-preserving input sizes.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.io
import torch

from conftest import REPO
from deeplab import USER_ERRORS
from caffe.net import Net
from deeplab.netinfo import net_info
from caffe.prototxt import parse_net, parse_solver

VOC = REPO / "prototxt" / "voc12"
VARIANTS = ["DeepLab", "DeepLab-7x7", "DeepLab-4x4", "DeepLab-LargeFOV", "DeepLab-MSc", "DeepLab-MSc-LargeFOV"]
# variant -> fc6 (kernel, dilation, pad, width)
FC6 = {"DeepLab": (4, 4, 6, 4096), "DeepLab-7x7": (7, 4, 12, 4096), "DeepLab-4x4": (4, 8, 12, 4096),
       "DeepLab-LargeFOV": (3, 12, 12, 1024), "DeepLab-MSc": (4, 4, 6, 4096),
       "DeepLab-MSc-LargeFOV": (3, 12, 12, 1024)}
VGG128 = {"DeepLab", "DeepLab-7x7", "DeepLab-4x4"}      # the release's DeepLab pooling (2x2 pools)
MSC = {"DeepLab-MSc", "DeepLab-MSc-LargeFOV"}
BACKBONE = [f"conv{b}_{i}" for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)] for i in range(1, n + 1)]
HEADS = ["data", "pool1", "pool2", "pool3", "pool4"]


def mapping(list_dir="/lists", feature_dir="/features", num_labels=21) -> dict:
    return {"DATA_ROOT": "/data", "LIST_DIR": str(list_dir), "TRAIN_SET": "train_aug", "TEST_SET": "val",
            "FEATURE_DIR": str(feature_dir), "NUM_LABELS": str(num_labels), "NET_ID": "X", "EXP": "exper/voc12"}


@functools.lru_cache(maxsize=None)
def param(variant: str, which: str):
    return parse_net(VOC / variant / f"{which}.prototxt", mapping())


def layer(p, name):
    found = [lp for lp in p.layer if lp.name == name]
    assert len(found) == 1, name
    return found[0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("which,phase", [("train", "TRAIN"), ("test", "TEST"), ("test", "TRAIN")])
def test_every_variant_builds(variant, which, phase):
    info = net_info(param(variant, which), phase)
    fc8 = info.blob("fc8_voc12")
    assert fc8.shape[1] == 21 and fc8.stride == (8, 8)
    if which == "train":
        assert set(info.outputs) == {"loss", "accuracy"}
        assert info.blob("label_shrink").shape[2:] == fc8.shape[2:]


@pytest.mark.parametrize("variant", VARIANTS)
def test_backbone_and_fc_layers(variant):
    p = param(variant, "train")
    names = [lp.name for lp in p.layer]
    for name in BACKBONE + ["fc6", "fc7", "fc8_voc12"]:
        assert layer(p, name).type == "Convolution"
    for b in range(1, 6):
        assert layer(p, f"conv{b}_1").bottom[0] == ("data" if b == 1 else f"pool{b - 1}")
    for name in ["conv5_1", "conv5_2", "conv5_3"]:
        cp = layer(p, name).convolution_param
        assert list(cp.dilation) == [2] and list(cp.pad) == [2]
    k, d, pad, width = FC6[variant]
    cp = layer(p, "fc6").convolution_param
    assert (list(cp.kernel_size), list(cp.dilation), list(cp.pad), cp.num_output) == ([k], [d], [pad], width)
    assert layer(p, "fc7").convolution_param.num_output == width
    assert layer(p, "fc6").bottom[0] == ("pool5a" if width == 1024 else "pool5")
    for drop, blob in (("drop6", "fc6"), ("drop7", "fc7")):
        lp = layer(p, drop)
        assert lp.type == "Dropout" and lp.dropout_param.dropout_ratio == 0.5 and list(lp.bottom) == [blob]
        assert names.index(drop) > names.index(blob)
    fc8 = layer(p, "fc8_voc12").convolution_param
    assert fc8.num_output == 21 and fc8.weight_filler.type == "gaussian"
    assert fc8.weight_filler.std == pytest.approx(0.01)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("which", ["train", "test"])
def test_pooling(variant, which):
    p = param(variant, which)
    pools = {lp.name: lp.pooling_param for lp in p.layer if lp.type == "Pooling"}
    got = {n: (pp.pool, pp.kernel_size, pp.stride, pp.pad) for n, pp in pools.items()}
    MAX, AVE = 0, 1
    if variant in VGG128:
        pool4_pad = 0 if which == "train" else 1
        want = {"pool1": (MAX, 2, 2, 1), "pool2": (MAX, 2, 2, 1), "pool3": (MAX, 2, 2, 1),
                "pool4": (MAX, 2, 1, pool4_pad), "pool5": (MAX, 3, 1, 1)}
    else:
        want = {"pool1": (MAX, 3, 2, 1), "pool2": (MAX, 3, 2, 1), "pool3": (MAX, 3, 2, 1),
                "pool4": (MAX, 3, 1, 1), "pool5": (MAX, 3, 1, 1)}
        if FC6[variant][3] == 1024:
            want["pool5a"] = (AVE, 3, 1, 1)
    assert got == want


@pytest.mark.parametrize("variant", VARIANTS)
def test_learning_rate_multipliers(variant):
    p = param(variant, "train")
    mults = {lp.name: [(s.lr_mult, s.decay_mult) for s in lp.param] for lp in p.layer if lp.type == "Convolution"}
    backbone = (0, 0) if variant in MSC else (1, 1), (0, 0) if variant in MSC else (2, 0)
    for name in BACKBONE + ["fc6", "fc7"]:
        assert tuple(mults[name]) == backbone, name
    assert mults["fc8_voc12"] == ([(1, 1), (2, 0)] if variant in MSC else [(10, 1), (20, 0)])
    for src in HEADS if variant in MSC else []:
        for part in ("conv", "fc", "ms"):
            assert mults[f"{src}_{part}"] == [(1, 1), (2, 0)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_data_loss_and_accuracy(variant):
    p = param(variant, "train")
    data = layer(p, "data")
    assert data.type == "ImageSegData" and list(data.top) == ["data", "label"]
    assert data.image_data_param.source == "/lists/train_aug.txt"
    assert data.image_data_param.root_folder == "/data"
    assert data.image_data_param.label_type == data.image_data_param.PIXEL
    assert data.image_data_param.shuffle
    tp = data.transform_param
    assert list(tp.mean_value) == pytest.approx([104.008, 116.669, 122.675]) and tp.mirror
    crop, batch = {"DeepLab-LargeFOV": (321, 30), "DeepLab-MSc-LargeFOV": (321, 30),
                   "DeepLab-MSc": (321, 20)}.get(variant, (306, 20))
    assert (tp.crop_size, data.image_data_param.batch_size) == (crop, batch)
    shrink = layer(p, "label_shrink")
    assert shrink.type == "Interp" and shrink.interp_param.shrink_factor == 8
    assert shrink.interp_param.pad_beg == (-1 if variant in VGG128 else 0)
    score = "fc_fusion" if variant in MSC else "fc8_voc12"
    loss, acc = layer(p, "loss"), layer(p, "accuracy")
    assert loss.type == "SoftmaxWithLoss" and list(loss.bottom) == [score, "label_shrink"]
    assert loss.loss_param.ignore_label == 255
    assert acc.type == "SegAccuracy" and list(acc.bottom) == [score, "label_shrink"]
    assert list(acc.seg_accuracy_param.ignore_label) == [255]


@pytest.mark.parametrize("variant", VARIANTS)
def test_test_net_data_upsampling_and_matwrite(variant):
    p = param(variant, "test")
    data = layer(p, "data")
    assert list(data.top) == ["data"]
    assert data.image_data_param.label_type == data.image_data_param.NONE
    assert data.image_data_param.source == "/lists/val.txt"
    assert data.transform_param.crop_size == (514 if variant in VGG128 else 513)
    assert not data.transform_param.mirror
    interp = layer(p, "fc8_interp")
    assert interp.interp_param.zoom_factor == 8
    assert interp.bottom[0] == ("fc_fusion" if variant in MSC else "fc8_voc12")
    mat = layer(p, "fc8_mat")
    assert mat.type == "MatWrite" and mat.include[0].phase == 1
    assert mat.mat_write_param.prefix == "/features/val/fc8/"
    assert mat.mat_write_param.source == "/lists/val_id.txt"
    info = net_info(p, "TEST")
    written = info.blob(mat.bottom[0])
    assert written.shape[2:] == ((514, 514) if variant in VGG128 else (513, 513))
    assert written.stride == (1, 1)


@pytest.mark.parametrize("variant", sorted(MSC))
def test_msc_heads_match_fc8(variant):
    p = param(variant, "train")
    strides = dict(zip(HEADS, [8, 4, 2, 1, 1]))
    for src in HEADS:
        conv = layer(p, f"{src}_conv")
        assert conv.bottom[0] == src
        cp = conv.convolution_param
        assert (cp.num_output, list(cp.kernel_size), list(cp.stride), list(cp.pad)) == (128, [3], [strides[src]], [1])
        assert cp.weight_filler.std == pytest.approx(0.001)
        assert layer(p, f"{src}_fc").convolution_param.num_output == 128
        assert layer(p, f"{src}_ms").convolution_param.num_output == 21
        for part in ("conv", "fc"):
            assert layer(p, f"drop_{src}_{part}").dropout_param.dropout_ratio == 0.5
    fusion = layer(p, "fc_fusion")
    assert fusion.eltwise_param.operation == 1  # SUM
    assert list(fusion.bottom) == [f"{s}_ms" for s in HEADS] + ["fc8_voc12"]
    for which, phase, size in (("train", "TRAIN", 41), ("test", "TEST", 65)):
        info = net_info(param(variant, which), phase)
        for b in [f"{s}_ms" for s in HEADS] + ["fc8_voc12", "fc_fusion"]:
            blob = info.blob(b)
            assert blob.shape[1:] == (21, size, size) and blob.stride == (8, 8), b


@pytest.mark.parametrize("variant", VARIANTS)
def test_solver(variant):
    s = parse_solver(VOC / variant / "solver.prototxt", mapping())
    assert s.net == "prototxt/voc12/X/train.prototxt"
    assert s.snapshot_prefix == "exper/voc12/model/train"
    assert (s.lr_policy, s.stepsize, s.max_iter, s.snapshot) == ("step", 2000, 6000, 2000)
    floats = (s.base_lr, s.gamma, s.momentum, s.weight_decay)      # float32 fields
    assert floats == pytest.approx((0.001, 0.1, 0.9, 0.0005), rel=1e-6)
    assert (VOC / variant / "train.prototxt").exists()


def test_num_labels_placeholder_sets_every_classifier():
    p = parse_net(VOC / "DeepLab-MSc-LargeFOV" / "train.prototxt", mapping(num_labels=11))
    outs = {lp.name: lp.convolution_param.num_output for lp in p.layer if lp.name.endswith(("_ms", "fc8_voc12"))}
    assert outs == {"data_ms": 11, "pool1_ms": 11, "pool2_ms": 11, "pool3_ms": 11, "pool4_ms": 11, "fc8_voc12": 11}


def test_unfilled_placeholder_is_named():
    m = mapping()
    del m["LIST_DIR"]
    with pytest.raises(USER_ERRORS, match=r"test\.prototxt:\d+: placeholder \$\{LIST_DIR\} has no value"):
        parse_net(VOC / "DeepLab" / "test.prototxt", m)


# ----------------------------------------------------------------- forwards (reduced width)
def randomize(net):
    """Random weights where the prototxt has none (VGG layers come from a caffemodel; Caffe's
    default filler is zeros, which would make every score 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            torch.nn.init.kaiming_normal_(p) if p.dim() == 4 else p.normal_(0, 0.1)


def reduced(variant, which, m, factor=16):
    """The parsed net with every convolution of 64+ outputs made ``factor`` times narrower."""
    p = parse_net(VOC / variant / f"{which}.prototxt", m)
    for lp in p.layer:
        if lp.type == "Convolution" and lp.convolution_param.num_output >= 64:
            lp.convolution_param.num_output //= factor
    return p


@pytest.mark.parametrize("variant,size", [("DeepLab-LargeFOV", 65), ("DeepLab", 66), ("DeepLab-MSc", 65)])
def test_test_net_forward_writes_scores(variant, size, tmp_path):
    """A 1 x 3 x size x size image (aligned like 513 / 514) gives size x size scores on disk."""
    (tmp_path / "val_id.txt").write_text("img0\n")
    net = Net(reduced(variant, "test", mapping(tmp_path, tmp_path / "feat")), "TEST",
              input_shapes={"data": (1, 3, size, size)})
    randomize(net)
    with torch.inference_mode():
        net({"data": torch.randn(1, 3, size, size)})
    data = scipy.io.loadmat(tmp_path / "feat" / "val" / "fc8" / "img0_blob_0.mat")["data"]
    assert data.shape == (size, size, 21, 1)   # MATLAB order W x H x C x N
    assert np.isfinite(data).all() and data.std() > 0


@pytest.mark.parametrize("variant,size,out", [("DeepLab", 50, 7), ("DeepLab-MSc-LargeFOV", 65, 9)])
def test_train_net_forward_backward(variant, size, out):
    """Training nets run at an aligned small crop; loss is finite and reaches the classifier."""
    net = Net(reduced(variant, "train", mapping()), "TRAIN",
              input_shapes={"data": (2, 3, size, size), "label": (2, 1, size, size)})
    randomize(net)
    label = torch.randint(0, 21, (2, 1, size, size)).float()
    label[:, :, :5] = 255
    blobs = net({"data": torch.randn(2, 3, size, size), "label": label}, outputs="all")
    score = "fc_fusion" if variant in MSC else "fc8_voc12"
    assert blobs[score].shape == (2, 21, out, out) and blobs["label_shrink"].shape == (2, 1, out, out)
    loss = net.loss(blobs)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    trained = ["fc8_voc12"] + ([f"{s}_{part}" for s in HEADS for part in ("conv", "fc", "ms")] if variant in MSC else [])
    for name in trained:
        assert net.layer(name).blobs[0].grad.abs().sum() > 0, name
