"""The CamVid CRF-as-RNN experiment's nets (prototxt/camvid/DeepLab-LargeFOV-CRFRNN) and its DCNN
baseline with the same budget (prototxt/camvid/DeepLab-LargeFOV-ft): structure, the CRF setting
results/camvid-crfrnn/README.md states, the solvers' shared budget, and small forwards.

Full-size nets are built on the meta device (deeplab.netinfo); forwards run on width-reduced
copies at small, alignment-preserving input sizes (8k + 1).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io
import torch

from conftest import REPO
from caffe.net import Net
from caffe.prototxt import parse_net, parse_solver
from deeplab import USER_ERRORS
from deeplab.netinfo import net_info

CAMVID = REPO / "prototxt" / "camvid"
CPU, CRFRNN, FT = CAMVID / "DeepLab-LargeFOV-CPU", CAMVID / "DeepLab-LargeFOV-CRFRNN", CAMVID / "DeepLab-LargeFOV-ft"
# The setting searched on CamVid val (results/camvid/README.md, best.json): w1 4, sigma_alpha 10,
# sigma_beta 3, w2 3, sigma_gamma 3.
SETTING = {"bilateral_filter_weight": 4, "theta_alpha": 10, "theta_beta": 3, "spatial_filter_weight": 3,
           "theta_gamma": 3}


def mapping(list_dir="/lists", feature_dir="/features") -> dict:
    return {"DATA_ROOT": "/data", "LIST_DIR": str(list_dir), "TRAIN_SET": "train", "TEST_SET": "val",
            "FEATURE_DIR": str(feature_dir), "NUM_LABELS": "11", "IGNORE_LABEL": "255", "NET_ID": "X",
            "EXP": "exper/camvid/X"}


def param(folder, which, m=None):
    return parse_net(folder / f"{which}.prototxt", m or mapping())


def layer(p, name):
    found = [lp for lp in p.layer if lp.name == name]
    assert len(found) == 1, name
    return found[0]


def upto(p, name):
    """The layers of ``p`` up to and including ``name``, as text (comparable across files)."""
    names = [lp.name for lp in p.layer]
    return [str(lp) for lp in p.layer[:names.index(name) + 1]]


def test_crfrnn_nets_are_the_cpu_nets_up_to_fc8():
    train, cpu_train = param(CRFRNN, "train"), param(CPU, "train")
    assert upto(train, "fc8_camvid") == upto(cpu_train, "fc8_camvid")
    test, cpu_test = param(CRFRNN, "test"), param(CPU, "test")
    assert cpu_test.layer[0].transform_param.crop_size == 481
    assert not test.layer[0].transform_param.HasField("crop_size")   # the canvas follows the image
    test.layer[0].transform_param.crop_size = 481
    assert upto(test, "fc8_camvid") == upto(cpu_test, "fc8_camvid")


def test_ft_nets_are_the_cpu_nets():
    for which in ("train", "test"):
        link = FT / f"{which}.prototxt"
        assert link.is_symlink() and link.resolve() == (CPU / f"{which}.prototxt").resolve()


@pytest.mark.parametrize("which,iterations", [("train", 5), ("test", 10)])
def test_crf_layer_parameters(which, iterations):
    p = param(CRFRNN, which)
    crf = layer(p, "inference1")
    assert crf.type == "MultiStageMeanfield" and list(crf.bottom) == ["unary", "Q0", "data"]
    assert list(crf.top) == ["pred"]
    mp = crf.multi_stage_meanfield_param
    assert mp.num_iterations == iterations and mp.compatibility_mode == mp.POTTS
    assert {k: getattr(mp, k) for k in SETTING} == SETTING
    split = layer(p, "split")
    assert list(split.bottom) == ["fc8_interp"] and list(split.top) == ["unary", "Q0"]
    interp = layer(p, "fc8_interp")
    assert list(interp.bottom) == ["fc8_camvid"] and interp.interp_param.zoom_factor == 8
    if which == "train":
        assert [(q.lr_mult, q.decay_mult) for q in crf.param] == [(100, 0), (100, 0), (10, 0)]
        for name in ("loss", "accuracy"):
            lp = layer(p, name)
            assert list(lp.bottom) == ["pred", "label"]   # full resolution: no label_shrink
        assert layer(p, "loss").loss_param.ignore_label == 255
        assert list(layer(p, "accuracy").seg_accuracy_param.ignore_label) == [255]
        assert "label_shrink" not in [lp.name for lp in p.layer]
    else:
        assert list(layer(p, "fc8_mat").bottom) == ["pred"]


def test_setting_is_the_searched_one():
    """The CRF-RNN starts from results/camvid's searched setting (best.json, README's line)."""
    import json
    best = json.loads((REPO / "results" / "camvid" / "best.json").read_text())
    assert (best["bi_w"], best["bi_xy_std"], best["bi_rgb_std"], best["pos_w"], best["pos_xy_std"]) == (
        SETTING["bilateral_filter_weight"], SETTING["theta_alpha"], SETTING["theta_beta"],
        SETTING["spatial_filter_weight"], SETTING["theta_gamma"])


def test_full_size_nets_build():
    info = net_info(param(CRFRNN, "train"), "TRAIN")
    assert info.blob("data").shape == (4, 3, 241, 241)
    assert info.blob("fc8_camvid").shape == (4, 11, 31, 31)
    assert info.blob("pred").shape == (4, 11, 241, 241)
    assert set(info.outputs) == {"loss", "accuracy"}
    # the test net over a 480 x 360 image: canvas 481 x 361 (the zoomed scores must match the image)
    info = net_info(param(CRFRNN, "test"), "TEST", input_shape=(1, 3, 361, 481))
    assert info.blob("fc8_camvid").shape == (1, 11, 46, 61) and info.blob("pred").shape == (1, 11, 361, 481)
    with pytest.raises(USER_ERRORS, match="inference1"):
        net_info(param(CRFRNN, "test"), "TEST", input_shape=(1, 3, 360, 480))
    for which, phase in (("train", "TRAIN"), ("test", "TEST")):
        assert net_info(param(FT, which), phase).blob("fc8_camvid").shape[1] == 11


def test_same_budget_and_rates():
    crf, ft = (parse_solver(f / "solver.prototxt", mapping()) for f in (CRFRNN, FT))
    assert crf.max_iter == ft.max_iter == crf.snapshot == ft.snapshot > 0
    assert crf.lr_policy == ft.lr_policy == "fixed"
    assert (crf.momentum, crf.weight_decay, crf.random_seed) == (ft.momentum, ft.weight_decay, ft.random_seed)
    assert crf.base_lr == pytest.approx(ft.base_lr / 10)
    # ft's rate is the last one the CPU run logged (results/camvid/train.log)
    last = re.findall(r"Iteration \d+, lr = ([0-9.e+-]+)", (REPO / "results" / "camvid" / "train.log").read_text())[-1]
    assert ft.base_lr == pytest.approx(float(last))
    for lp_crf, lp_ft in zip(param(CRFRNN, "train").layer[:1], param(FT, "train").layer[:1]):
        assert lp_crf.image_data_param.batch_size == lp_ft.image_data_param.batch_size == 4
        assert lp_crf.transform_param.crop_size == lp_ft.transform_param.crop_size == 241


def reduced(p, factor=16):
    """``p`` with every convolution of 64+ outputs made ``factor`` times narrower, random weights
    set after building (the fillers of the test net are zeros)."""
    for lp in p.layer:
        if lp.type == "Convolution" and lp.convolution_param.num_output >= 64:
            lp.convolution_param.num_output //= factor
    return p


def randomize(net):
    torch.manual_seed(0)
    with torch.no_grad():
        for lay in net.layers:
            if lay.type != "MultiStageMeanfield":
                for b in lay.blobs:
                    torch.nn.init.kaiming_normal_(b) if b.dim() == 4 else b.normal_(0, 0.1)


def test_train_net_forward_backward_reaches_crf_and_dcnn():
    """Crop 25 (= 8 x 3 + 1): the loss is on 25 x 25 CRF-RNN outputs and reaches the CRF blobs and fc8."""
    net = Net(reduced(param(CRFRNN, "train")), "TRAIN",
              input_shapes={"data": (2, 3, 25, 25), "label": (2, 1, 25, 25)})
    randomize(net)
    crf = net.layer("inference1")
    np.testing.assert_array_equal(crf.blobs[0].detach().reshape(11, 11).numpy(), 3 * np.eye(11))
    np.testing.assert_array_equal(crf.blobs[1].detach().reshape(11, 11).numpy(), 4 * np.eye(11))
    np.testing.assert_array_equal(crf.blobs[2].detach().reshape(11, 11).numpy(), -np.eye(11))
    label = torch.randint(0, 11, (2, 1, 25, 25)).float()
    label[:, :, :4] = 255
    blobs = net({"data": torch.randn(2, 3, 25, 25) * 50, "label": label}, outputs="all")
    assert blobs["pred"].shape == (2, 11, 25, 25)
    loss = net.loss(blobs)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for b in crf.blobs:
        assert b.grad.abs().sum() > 0
    assert net.layer("fc8_camvid").blobs[0].grad.abs().sum() > 0
    assert net.layer("conv1_1").blobs[0].grad is None   # frozen as in DeepLab-LargeFOV-CPU


def test_test_net_dumps_crfrnn_output(tmp_path):
    """A 25 x 33 canvas gives 25 x 33 CRF-RNN outputs in MatWrite's file."""
    (tmp_path / "val_id.txt").write_text("img0\n")
    net = Net(reduced(param(CRFRNN, "test", mapping(tmp_path, tmp_path / "feat"))), "TEST",
              input_shapes={"data": (1, 3, 25, 33)})
    randomize(net)
    with torch.inference_mode():
        out = net({"data": torch.randn(1, 3, 25, 33) * 50}, outputs=["pred", "fc8_interp"])
    assert out["pred"].shape == (1, 11, 25, 33)
    assert not torch.allclose(out["pred"], out["fc8_interp"])   # the CRF changed the scores
    data = scipy.io.loadmat(tmp_path / "feat" / "val" / "fc8" / "img0_blob_0.mat")["data"]
    assert data.shape == (33, 25, 11, 1) and np.isfinite(data).all()   # MATLAB order W x H x C x N
