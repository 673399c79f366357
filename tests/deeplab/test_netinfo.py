"""deeplab.netinfo and tools/netinfo.py: shapes, parameter counts, strides, receptive fields.

The paper's facts (Section 3.2, Table 2) come out of the real definitions in prototxt/voc12;
the stride / receptive-field rules are pinned on small nets with hand-computed numbers.
"""
from __future__ import annotations

import json
from fractions import Fraction

import pytest

from conftest import REPO
from deeplab import USER_ERRORS
from deeplab.netinfo import net_info, parse_input_arg, parse_input_shape
from caffe.prototxt import parse_net

from deeplab.cli import file_placeholders, run_main

from deeplab.commands import netinfo as netinfo_tool  # noqa: E402

VOC = REPO / "prototxt" / "voc12"
SETS = {"DATA_ROOT": "/d", "LIST_DIR": "/l", "TRAIN_SET": "train", "TEST_SET": "val",
        "FEATURE_DIR": "/f", "NUM_LABELS": "21"}


def voc(variant, which):
    return VOC / variant / f"{which}.prototxt"


def set_args(names=SETS):
    return [a for k, v in names.items() for a in ("--set", f"{k}={v}")]


# ----------------------------------------------------------------- the paper's facts
@pytest.mark.parametrize("variant,exact,paper", [
    ("DeepLab-7x7", 134_346_581, 134.3), ("DeepLab", 65_140_565, 65.1), ("DeepLab-4x4", 65_140_565, 65.1),
    ("DeepLab-LargeFOV", 20_505_429, 20.5)])
def test_parameter_counts_match_table_2(variant, exact, paper):
    info = net_info(voc(variant, "train"), "TRAIN", SETS)
    assert info.total_params == exact
    assert round(info.total_params / 1e6, 1) == paper
    # VGG-16's conv layers (14,714,688) + fc6 + fc7 + a 21-way fc8, counted by hand for DeepLab:
    if variant == "DeepLab":
        assert exact == 14_714_688 + (4 * 4 * 512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 21 + 21)


def test_msc_heads_add_their_parameters():
    heads = (3 * 9 * 128 + 64 * 9 * 128 + 128 * 9 * 128 + 256 * 9 * 128 + 512 * 9 * 128 + 5 * 128
             + 5 * (128 * 128 + 128) + 5 * (128 * 21 + 21))
    assert net_info(voc("DeepLab-MSc", "train"), "TRAIN", SETS).total_params == 65_140_565 + heads
    assert net_info(voc("DeepLab-MSc-LargeFOV", "test"), "TEST", SETS).total_params == 20_505_429 + heads


def test_deeplab_306_gives_39():
    """Section 3.2: 'Given a 306x306 input image, it produces 39x39 dense raw feature scores'
    and a receptive field of 308x308 in convolutional mode."""
    info = net_info(voc("DeepLab", "train"), "TRAIN", SETS, (1, 3, 306, 306))
    fc8 = info.blob("fc8_voc12")
    assert fc8.shape == (1, 21, 39, 39) and fc8.stride == (8, 8) and fc8.rf == (308, 308)
    assert [info.blob(p).shape[2] for p in ("pool1", "pool2", "pool3", "pool4")] == [154, 78, 40, 39]
    assert info.blob("label_shrink").shape == (1, 1, 39, 39)


def test_three_by_three_pools_would_give_40():
    """The discrepancy documented in prototxt/voc12/DeepLab: 3x3/stride 2/pad 1 pools (the
    LargeFOV definition's) give 154 -> 78 -> 40 and a 40x40 fc8 for the same 306 input."""
    p = parse_net(voc("DeepLab", "train"), SETS)
    for lp in p.layer:
        if lp.type == "Pooling" and lp.name in ("pool1", "pool2", "pool3", "pool4"):
            lp.pooling_param.kernel_size = 3
            lp.pooling_param.pad = 1
    keep = [lp for lp in p.layer if lp.name not in ("loss", "accuracy")]   # the label would not fit
    del p.layer[:]
    p.layer.extend(keep)
    info = net_info(p, "TRAIN")
    assert [info.blob(p).shape[2] for p in ("pool1", "pool2", "pool3", "pool4")] == [154, 78, 40, 40]
    assert info.blob("fc8_voc12").shape[2:] == (40, 40)


@pytest.mark.parametrize("which,phase,size,out", [("test", "TEST", 513, 65), ("train", "TRAIN", 321, 41)])
def test_largefov_sizes(which, phase, size, out):
    default = net_info(voc("DeepLab-LargeFOV", which), phase, SETS)
    assert default.blob("data").shape[2:] == (size, size)
    assert default.blob("fc8_voc12").shape[2:] == (out, out)
    other = net_info(voc("DeepLab-LargeFOV", which), phase, SETS, (1, 3, 834 - size, 834 - size))
    assert other.blob("fc8_voc12").shape[2:] == (106 - out, 106 - out)       # 513 <-> 321, 65 <-> 41


@pytest.mark.parametrize("variant,rf", [("DeepLab", 308), ("DeepLab-7x7", 404), ("DeepLab-4x4", 404),
                                        ("DeepLab-LargeFOV", 435), ("DeepLab-MSc", 323)])
def test_receptive_fields(variant, rf):
    """308 and VGG-16's 404 are the paper's numbers; LargeFOV: 227 after pool5 (3x3 pools),
    +16 for pool5a, +24 * 8 for fc6 (3x3, dilation 12, at stride 8)."""
    info = net_info(voc(variant, "test"), "TEST", SETS)
    assert info.blob("fc8_voc12").rf == (rf, rf)
    up = info.blob("fc8_interp")
    assert up.stride == (1, 1) and up.rf == (rf + 8, rf + 8)


def test_deeplab_test_net_is_aligned_with_its_input():
    info = net_info(voc("DeepLab", "test"), "TEST", SETS)
    assert info.blob("fc8_voc12").shape[2:] == (67, 67)
    assert info.blob("fc8_interp").shape[2:] == (529, 529)
    assert info.blob("fc8_crop").shape[2:] == (514, 514) == info.blob("data").shape[2:]


# ----------------------------------------------------------------- the rules, by hand
SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 33 dim: 33 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "p1" type: "Pooling" bottom: "c1" top: "p1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "c2" type: "Convolution" bottom: "p1" top: "c2"
  convolution_param { num_output: 2 kernel_size: 3 dilation: 3 pad: 3 stride: 2 bias_term: false } }
layer { name: "r2" type: "ReLU" bottom: "c2" top: "c2" }
layer { name: "side" type: "Convolution" bottom: "data" top: "side"
  convolution_param { num_output: 2 kernel_h: 1 kernel_w: 5 pad_h: 0 pad_w: 2 stride: 4 } }
layer { name: "sum" type: "Eltwise" bottom: "c2" bottom: "side" top: "sum" }
layer { name: "zoom" type: "Interp" bottom: "sum" top: "zoom" interp_param { zoom_factor: 4 } }
layer { name: "shrink" type: "Interp" bottom: "data" top: "shrink" interp_param { shrink_factor: 4 } }
layer { name: "cut" type: "Padding" bottom: "zoom" top: "cut" padding_param { pad_beg: -1 pad_end: -2 } }
layer { name: "g" type: "Pooling" bottom: "sum" top: "g" pooling_param { pool: AVE global_pooling: true } }
layer { name: "soft" type: "Softmax" bottom: "cut" top: "soft" }
"""


def test_stride_and_receptive_field_rules():
    info = net_info(SMALL)
    b = info.blob
    assert (b("data").stride, b("data").rf) == ((1, 1), (1, 1))
    assert (b("c1").stride, b("c1").rf) == ((1, 1), (3, 3))
    assert (b("p1").shape[2:], b("p1").stride, b("p1").rf) == ((17, 17), (2, 2), (5, 5))
    # dilation 3 on a 3x3 kernel spans 7 inputs of p1, each 2 pixels apart: 5 + 6 * 2
    assert (b("c2").shape[2:], b("c2").stride, b("c2").rf) == ((9, 9), (4, 4), (17, 17))
    assert (b("side").shape[2:], b("side").stride, b("side").rf) == ((9, 9), (4, 4), (1, 5))
    assert (b("sum").stride, b("sum").rf) == ((4, 4), (17, 17))          # the wider field of the two
    # zoom 4: 9 -> 33, output i reads input i * 8/32: stride 4/4 = 1, one input step (4) wider
    assert (b("zoom").shape[2:], b("zoom").stride, b("zoom").rf) == ((33, 33), (1, 1), (21, 21))
    # shrink 4: 33 -> 9, every output on an input pixel (32/8 = 4): field unchanged
    assert (b("shrink").shape[2:], b("shrink").stride, b("shrink").rf) == ((9, 9), (4, 4), (1, 1))
    assert (b("cut").shape[2:], b("cut").stride, b("cut").rf) == ((30, 30), (1, 1), (21, 21))
    assert (b("soft").stride, b("soft").rf) == ((1, 1), (21, 21))
    # global pooling sees all 9 inputs of sum, 4 apart: 17 + 8 * 4
    assert (b("g").shape[2:], b("g").stride, b("g").rf) == ((1, 1), None, (49, 49))
    assert info.total_params == (2 * 9 + 2) + (2 * 2 * 9) + (2 * 5 + 2)
    params = {layer.name: layer.params for layer in info.layers}
    assert params == {"data": 0, "c1": 20, "p1": 0, "c2": 36, "r2": 0, "side": 12, "sum": 0, "zoom": 0,
                      "shrink": 0, "cut": 0, "g": 0, "soft": 0}


def test_fractional_stride_when_zoom_does_not_divide():
    text = SMALL.replace("zoom_factor: 4", "height: 20 width: 20")
    z = net_info(text).blob("zoom")
    assert z.shape[2:] == (20, 20) and z.stride == (Fraction(32, 19), Fraction(32, 19)) and z.rf == (21, 21)
    assert z.to_dict()["stride"] == [pytest.approx(32 / 19)] * 2


def test_shared_parameters_count_once():
    text = SMALL.replace('name: "c1" type: "Convolution" bottom: "data" top: "c1"',
                         'name: "c1" type: "Convolution" bottom: "data" top: "c1" param { name: "w" }')
    text += ('layer { name: "c1b" type: "Convolution" bottom: "data" top: "c1b" param { name: "w" } '
             'convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }\n')
    info = net_info(text)
    assert {layer.name: layer.params for layer in info.layers}["c1b"] == 20
    assert info.total_params == 20 + 36 + 12 + 2          # c1b's bias is its own


def test_parse_input_shape():
    assert parse_input_shape("1,3,321,321") == (1, 3, 321, 321)
    assert parse_input_shape("2x3x65x65") == (2, 3, 65, 65)
    for bad in ("1,3,321", "1,3,0,5", "a,b,c,d"):
        with pytest.raises(USER_ERRORS, match="--input expects N,C,H,W"):
            parse_input_shape(bad)


# ----------------------------------------------------------------- the command line
def test_cli_table(capsys):
    assert netinfo_tool.main([str(voc("DeepLab", "train")), "--input", "1,3,306,306", *set_args()]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and not line.startswith(" ")}
    assert rows["fc8_voc12"][:6] == ["fc8_voc12", "Convolution", "fc8_voc12", "1x21x39x39", "8", "308"]
    assert rows["fc8_voc12"][6] == "86,037"
    assert rows["pool3"][3:6] == ["1x256x40x40", "8", "44"]
    assert "net 'DeepLab' (TRAIN): 42 layers, 65,140,565 parameters (65.1M)" in out
    assert "input data: 1x3x306x306, stride 1, receptive field 1" in out


def test_cli_json(capsys):
    assert netinfo_tool.main([str(voc("DeepLab-LargeFOV", "test")), "--json", *set_args()]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["name"], data["phase"], data["total_params"]) == ("DeepLab-LargeFOV", "TEST", 20_505_429)
    layers = {layer["name"]: layer for layer in data["layers"]}
    fc8 = layers["fc8_voc12"]["tops"][0]
    assert fc8 == {"name": "fc8_voc12", "shape": [1, 21, 65, 65], "stride": [8, 8], "rf": [435, 435]}
    assert layers["fc6"]["params"] == 3 * 3 * 512 * 1024 + 1024
    assert layers["fc6"]["param_shapes"] == [[1024, 512, 3, 3], [1024]]
    assert layers["fc8_mat"]["tops"] == []


def test_cli_phase_defaults_by_file_name():
    assert netinfo_tool.default_phase("prototxt/voc12/DeepLab/train.prototxt") == "TRAIN"
    assert netinfo_tool.default_phase("prototxt/voc12/DeepLab/test.prototxt") == "TEST"


@pytest.mark.parametrize("argv,message", [
    (["--input", "1,3,5"], "error: --input expects N,C,H,W"),
    ([], "error: {net}:3: placeholder ${N} has no value; pass --set N=..."),
])
def test_cli_errors_are_one_line(capsys, tmp_path, argv, message):
    net = tmp_path / "n.prototxt"                # ${N} changes the net and has no default: no dummy for it
    net.write_text("input: 'data' input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n"
                   "layer { name: 'c' type: 'Convolution' bottom: 'data' top: 'c'\n"
                   "  convolution_param { num_output: ${N} kernel_size: 1 } }\n")
    args = [str(net), *(["--set", "N=2"] if argv else []), *argv]
    with pytest.raises(SystemExit) as exit_info:
        run_main(netinfo_tool.main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message.replace("{net}", str(net))) and err.count("\n") == 1


def test_cli_needs_no_data_paths(capsys):
    """Issue 15 item 6: placeholders that only name files get a visible dummy, and netinfo says so."""
    path = str(voc("DeepLab-LargeFOV", "test"))
    assert netinfo_tool.main([path, "--set", "NUM_LABELS=21"]) == 0
    out, err = capsys.readouterr()
    assert "net 'DeepLab-LargeFOV' (TEST): 42 layers, 20,505,429 parameters" in out
    assert err.startswith("note: placeholders that only name files are shown as dummies")
    for name in ("DATA_ROOT", "LIST_DIR", "TEST_SET", "FEATURE_DIR"):
        assert f"${{{name}}}=<{name}>" in err
    # A value given wins over the dummy; NUM_LABELS is never a dummy.
    assert netinfo_tool.main([path, "--set", "NUM_LABELS=21", "--set", "DATA_ROOT=/d"]) == 0
    assert "${DATA_ROOT}" not in capsys.readouterr().err
    # Issue 20: the VOC nets build as they stand (${NUM_LABELS:-21}); --set still overrides.
    assert netinfo_tool.main([path]) == 0
    assert "fc8_voc12   Convolution   fc8_voc12      1x21x65x65" in capsys.readouterr().out
    assert netinfo_tool.main([path, "--set", "NUM_LABELS=11"]) == 0
    assert "1x11x65x65" in capsys.readouterr().out


def test_file_placeholders_only_in_file_fields(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('# ${IN_COMMENT}\nlayer { image_data_param { source: "${A}/${B}.txt" root_folder: "${R}" } }\n'
                 'layer { name: "${B}" convolution_param { num_output: ${N} } }\n'
                 'layer { mat_write_param { prefix: "${P}/x" } }\n')
    assert file_placeholders(str(p), {"P": "given"}) == {"A": "<A>", "R": "<R>"}  # B also names a layer
    p.write_text('source: "${A}"\nroot_folder: "${R}"\n')
    assert file_placeholders(str(p), {}) == {"A": "<A>", "R": "<R>"}


STAGED = """
name: "staged"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "deploy_only" type: "ReLU" bottom: "conv" top: "relu" include { phase: TEST stage: "deploy" } }
layer { name: "deep" type: "Convolution" bottom: "conv" top: "deep" include { min_level: 2 }
  convolution_param { num_output: 2 kernel_size: 1 } }
"""


def test_cli_stage_and_level_choose_layers(tmp_path, capsys):
    path = tmp_path / "staged.prototxt"
    path.write_text(STAGED)
    assert netinfo_tool.main([str(path), "--json"]) == 0
    assert [layer["name"] for layer in json.loads(capsys.readouterr().out)["layers"]] == ["in", "conv"]
    assert netinfo_tool.main([str(path), "--json", "--stage", "deploy", "--level", "2"]) == 0
    names = [layer["name"] for layer in json.loads(capsys.readouterr().out)["layers"]]
    assert names == ["in", "conv", "deploy_only", "deep"]


def test_unsupported_types_are_all_named_at_once(tmp_path, capsys):
    path = tmp_path / "fork.prototxt"
    path.write_text(STAGED + "".join(
        f'layer {{ name: "{n}" type: "{t}" bottom: "conv" top: "{n}" }}\n'
        for n, t in [("bn1", "BinaryPngWrite"), ("up1", "SpatialProduct"), ("bn2", "BinaryPngWrite"),
                     ("x", "NoSuchType")]))
    with pytest.raises(SystemExit) as exit_info:
        run_main(netinfo_tool.main, [str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert ("needs 3 layer type(s) this engine lacks: BinaryPngWrite (2 layers: bn1, bn2); SpatialProduct "
            "(1 layer: up1); NoSuchType (1 layer: x)") in err


# ---------------------------------------------------------------- issue 20: netinfo reads no data
BVLC_STYLE = """name: 'lenet'
layer { name: 'mnist' type: 'Data' top: 'data' top: 'label' include { phase: TRAIN }
  transform_param { scale: 0.00390625 mean_file: '/absent/mean.binaryproto' }
  data_param { source: '/absent/mnist_train_lmdb' batch_size: 64 backend: LMDB } }
layer { name: 'conv1' type: 'Convolution' bottom: 'data' top: 'conv1' convolution_param { num_output: 4 kernel_size: 5 } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'conv1' top: 'ip' inner_product_param { num_output: 10 } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""

FCN_STYLE = """name: 'fcn'
layer { name: 'data' type: 'Python' top: 'data' top: 'label'
  python_param { module: 'absent_voc_layers' layer: 'SBDDSegDataLayer' param_str: "{'sbdd_dir': '/absent'}" } }
layer { name: 'score' type: 'Convolution' bottom: 'data' top: 'score' convolution_param { num_output: 21 kernel_size: 1 } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'score' bottom: 'label' top: 'loss'
  loss_param { ignore_label: 255 normalize: false } }
"""

IMAGE_LIST = """name: 'imagedata'
layer { name: 'data' type: 'ImageData' top: 'data' top: 'label'
  transform_param { crop_size: 227 mean_file: '/absent/mean.binaryproto' }
  image_data_param { source: '/absent/list.txt' batch_size: 5 new_height: 256 new_width: 256 } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 3 } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""


def test_netinfo_never_reads_data_input_replaces_data_layers(tmp_path, capsys):
    lenet, fcn, images = tmp_path / "lenet.prototxt", tmp_path / "fcn.prototxt", tmp_path / "images.prototxt"
    lenet.write_text(BVLC_STYLE)
    fcn.write_text(FCN_STYLE)
    images.write_text(IMAGE_LIST)
    info = net_info(str(lenet), "TRAIN", input_shape=(64, 1, 28, 28))
    assert info.layers[0].type == "Data" and info.blob("data").shape == (64, 1, 28, 28)
    assert info.blob("label").shape == (64,) and info.blob("ip").shape == (64, 10)
    info = net_info(str(fcn), "TRAIN", input_shape=(1, 3, 50, 60))
    assert info.layers[0].type == "Python" and info.blob("label").shape == (1, 1, 50, 60)
    assert info.blob("score").stride == (1, 1)
    info = net_info(str(images), "TRAIN")                     # crop_size and batch: no --input needed
    assert info.blob("data").shape == (5, 3, 227, 227) and info.blob("label").shape == (5,)
    for path, name, kind, what in ((lenet, "mnist", "Data", "source /absent/mnist_train_lmdb"),
                                   (fcn, "data", "Python", "Python module absent_voc_layers")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(netinfo_tool.main, [str(path), "--phase", "TRAIN"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err == (f"error: {path}:2: layer {name!r} ({kind}): its top shapes come from {what}, which "
                       f"netinfo does not read; pass --input N,C,H,W (or TOP=SHAPE for each of data, label)\n")
    assert netinfo_tool.main([str(lenet), "--phase", "TRAIN", "--input", "2,1,28,28"]) == 0
    assert "loss" in capsys.readouterr().out


# BVLC's examples/hdf5_classification: HDF5 rows of 4 features and a scalar label, shapes no single
# N,C,H,W describes; an RGB-D net whose second image top has 3 channels of its own.
HDF5_ROWS = """name: 'logreg'
layer { name: 'data' type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param { source: '/absent/train.txt' batch_size: 10 } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 2 } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""

RGBD = """name: 'rgbd'
layer { name: 'data' type: 'Python' top: 'color' top: 'hha' top: 'label' python_param { module: 'absent' layer: 'L' } }
layer { name: 'c1' type: 'Convolution' bottom: 'color' top: 'c1' convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: 'c2' type: 'Convolution' bottom: 'hha' top: 'c2' convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: 'sum' type: 'Eltwise' bottom: 'c1' bottom: 'c2' top: 'score' }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'score' bottom: 'label' top: 'loss' }
"""


def test_input_names_each_data_top(tmp_path, capsys):
    """Issue 20 (survey): --input TOP=SHAPE gives a data top its own shape, any number of axes."""
    assert parse_input_arg("data=10,4") == ("data", (10, 4)) and parse_input_arg("label=10") == ("label", (10,))
    assert parse_input_arg("1,3,8,8") == (None, (1, 3, 8, 8))
    for bad in ("data=", "=1,2", "data=1,0", "data=a"):
        with pytest.raises(USER_ERRORS, match="--input expects N,C,H,W or TOP=D0,D1"):
            parse_input_arg(bad)
    hdf5, rgbd = tmp_path / "hdf5.prototxt", tmp_path / "rgbd.prototxt"
    hdf5.write_text(HDF5_ROWS)
    rgbd.write_text(RGBD)
    info = net_info(str(hdf5), "TRAIN", input_tops={"data": (10, 4), "label": (10,)})
    assert info.total_params == 4 * 2 + 2 and info.blob("ip").shape == (10, 2) and info.layers[0].type == "HDF5Data"
    # --input N,C,H,W sizes the image top; a named top wins over it (hha 3 channels, not 1)
    info = net_info(str(rgbd), "TRAIN", input_shape=(1, 3, 6, 6), input_tops={"hha": (1, 3, 6, 6)})
    assert info.blob("hha").shape == (1, 3, 6, 6) and info.blob("label").shape == (1, 1, 6, 6)
    assert info.total_params == 2 * (3 * 2 + 2)
    assert netinfo_tool.main([str(hdf5), "--phase", "TRAIN", "--input", "data=10,4", "--input", "label=10"]) == 0
    assert "input data: 10x4\ninput label: 10\n" in capsys.readouterr().out
    for argv, message in (
            (["--input", "data=10,4"], "layer 'data' (HDF5Data): --input gives data but not label; give every top"),
            (["--input", "data=10,4", "--input", "labels=10"],
             "--input names 'labels', which no data layer of this phase produces (their tops: data, label)"),
            (["--input", "1,3,4,4", "--input", "1,1,4,4"], "--input N,C,H,W given twice")):
        with pytest.raises(SystemExit) as exit_info:
            run_main(netinfo_tool.main, [str(hdf5), "--phase", "TRAIN", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


# DeepLab v2 test nets (isht7's copies of the ResNet-101 ones): HDF5Data, and SegAccuracy with the
# forks' seg_accuracy_param.reset, which the schema refused before (the survey had to drop it).
V2_TEST = """name: 'v2'
layer { name: 'data' type: 'HDF5Data' top: 'data' top: 'label' hdf5_data_param { source: '/absent/list.txt' batch_size: 1 } }
layer { name: 'fc1' type: 'Convolution' bottom: 'data' top: 'fc1' convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: 'accuracy' type: 'SegAccuracy' bottom: 'fc1' bottom: 'label' top: 'acc'
  seg_accuracy_param { ignore_label: 255 reset: false } }
"""


def test_survey_driver_gives_each_data_top_and_the_forks_reset_parses(tmp_path, capsys):
    """bench/survey_nets.py --netinfo derives one --input TOP=SHAPE per data top; the v2 test net
    with reset: false builds under deeplab-netinfo."""
    from bench.survey_nets import in_netinfo_scope, netinfo_inputs
    path = tmp_path / "v2.prototxt"
    path.write_text(V2_TEST)
    args = netinfo_inputs(parse_net(str(path), None), "TEST", (9, 7))
    assert args == ["data=1,3,9,7", "label=1,1,9,7"]
    hdf5 = parse_net(HDF5_ROWS, None)
    assert netinfo_inputs(hdf5, "TRAIN", (9, 7)) == ["data=10,3,9,7", "label=10,1,9,7"]
    hdf5.layer[0].hdf5_data_param.source = "examples/hdf5_classification/data/train.txt"
    assert netinfo_inputs(hdf5, "TRAIN", (9, 7)) == ["data=10,4", "label=10"]   # BVLC's 4 features per row
    assert in_netinfo_scope({"builds": None, "missing": {"HDF5Data(shapes in files)": ["data"]}})
    assert not in_netinfo_scope({"builds": None, "missing": {"BinaryPngWrite": ["w"]}})
    assert netinfo_tool.main([str(path), "--phase", "TEST", *[a for t in args for a in ("--input", t)]]) == 0
    assert "output acc: 1x1x1x3" in capsys.readouterr().out


def test_memory_data_with_a_data_dim_top(tmp_path):
    """The DeepLab v2 rewrite's 3-top MemoryData: data_dim is N x 1 x 1 x 2 under --input too, and
    carries no stride or receptive field (as ImageSegData's)."""
    path = tmp_path / "m3.prototxt"
    path.write_text("layer { name: 'data' type: 'MemoryData' top: 'data' top: 'label' top: 'data_dim'\n"
                    "  memory_data_param { batch_size: 1 channels: 3 height: 9 width: 9 } }\n"
                    "layer { name: 'c' type: 'Convolution' bottom: 'data' top: 'c' convolution_param { num_output: 2 kernel_size: 3 } }\n")
    for shape in (None, (2, 3, 5, 5)):
        info = net_info(str(path), "TEST", input_shape=shape)
        n = shape[0] if shape else 1
        dim = info.blob("data_dim")
        assert dim.shape == (n, 1, 1, 2) and dim.stride is None and dim.rf is None
        assert info.blob("label").shape == (n,) and info.blob("c").rf == (3, 3)


def test_largefov_test_net_with_the_release_dense_crf_block(tmp_path):
    """The release's LargeFOV test net has a DENSE_CRF layer (fc8_interp, data_dim, data) commented
    out; enabled, netinfo builds it on the meta device."""
    text = voc("DeepLab-LargeFOV", "test").read_text()
    text = text.replace('top: "data"\n', 'top: "data"\n  top: "label"\n  top: "data_dim"\n', 1)   # as the release's
    text += """
layer { name: "crf" type: "DenseCRF" bottom: "fc8_interp" bottom: "data_dim" bottom: "data" top: "crf_inf"
  dense_crf_param { max_iter: 10 pos_w: 3 pos_xy_std: 3 bi_w: 5 bi_xy_std: 50 bi_rgb_std: 10 }
  include { phase: TEST } }
"""
    path = tmp_path / "test_crf.prototxt"
    path.write_text(text)
    dummies = file_placeholders(path, {})
    info = net_info(str(path), "TEST", dummies)
    assert info.blob("crf_inf").shape == (1, 21, 513, 513)


def test_placeholder_default_value():
    from caffe.prototxt import fill_placeholders
    text = "num_output: ${N:-21}  # ${N:-21}\nname: '${A}'\n"
    assert fill_placeholders(text, {"A": "x"}, "f") == "num_output: 21  # ${N:-21}\nname: 'x'\n"
    assert fill_placeholders(text, {"A": "x", "N": "11"}, "f").startswith("num_output: 11 ")
