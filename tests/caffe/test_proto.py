"""Caffe schema and prototxt reading: placeholders, errors with line numbers, Caffe's upgrade."""
import pathlib
import subprocess
import sys

import pytest
from google.protobuf import text_format

from conftest import FIXTURES, REPO
from caffe import CaffeError
from caffe.proto import caffe_pb2 as pb
from caffe.prototxt import fill_placeholders, format_net, parse_net, parse_solver, placeholders, split_comment

GOLDEN = FIXTURES / "golden"

# A net in the style of the DeepLab v1 release (V1 syntax, fork layers, ${...} placeholders).
FORK_V1 = """\
name: "${NET_ID}"
layers {
  name: "data"
  type: IMAGE_SEG_DATA
  top: "data"
  top: "label"
  image_data_param {
    root_folder: "${DATA_ROOT}"
    source: "${EXP}/list/${TRAIN_SET}.txt"
    label_type: PIXEL
    batch_size: 2
    shuffle: true
  }
  transform_param { mean_value: 104.008 mean_value: 116.669 mean_value: 122.675
                    crop_size: 65 mirror: true }
  include: { phase: TRAIN }
}
layers {
  bottom: "data" top: "fc6" name: "fc6" type: CONVOLUTION strict_dim: false
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 8 pad: 12 hole: 12 kernel_size: 3 }
}
layers { bottom: "fc6" top: "fc6" name: "relu6" type: RELU }
layers {
  bottom: "fc6" top: "fc8_${EXP}" name: "fc8_${EXP}" type: CONVOLUTION
  blobs_lr: 10 blobs_lr: 20 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: ${NUM_LABELS} kernel_size: 1
                      weight_filler { type: "gaussian" std: 0.01 } }
}
layers { bottom: "label" top: "label_shrink" name: "label_shrink" type: INTERP
         interp_param { shrink_factor: 8 pad_beg: -1 pad_end: 0 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc8_${EXP}" bottom: "label_shrink"
         softmaxloss_param { ignore_label: 255 } include: { phase: TRAIN } }
layers { name: "accuracy" type: SEG_ACCURACY bottom: "fc8_${EXP}" bottom: "label_shrink"
         top: "accuracy" seg_accuracy_param { metric: PixelIOU ignore_label: 255 } }
layers { bottom: "fc8_${EXP}" top: "fc8_interp" name: "fc8_interp" type: INTERP
         interp_param { zoom_factor: 8 } }
layers { bottom: "fc8_interp" top: "padded" name: "pad" type: PADDING
         padding_param { pad_beg: 1 pad_end: 2 } }
layers {
  name: "fc8_mat" type: MAT_WRITE bottom: "fc8_interp"
  mat_write_param {
    prefix: "${FEATURE_DIR}/${TEST_SET}/fc8/"
    source: "${EXP}/list/${TEST_SET}_id.txt"
    strip: 0
    period: 1
  }
  include: { phase: TEST }
}
# layers { name: "crf" type: DENSE_CRF prefix: "${NOT_SET}" }
"""

# The same net in the current syntax.
FORK_V2 = """\
name: "deeplab_net"
layer {
  name: "data" type: "ImageSegData" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 65 mean_value: 104.008 mean_value: 116.669
                    mean_value: 122.675 }
  image_data_param { source: "voc12/list/train_aug.txt" batch_size: 2 shuffle: true
                     root_folder: "/data/VOC2012" label_type: PIXEL }
}
layer {
  name: "fc6" type: "Convolution" bottom: "data" top: "fc6"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 8 pad: 12 kernel_size: 3 hole: 12 }
  strict_dim: false
}
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer {
  name: "fc8_voc12" type: "Convolution" bottom: "fc6" top: "fc8_voc12"
  param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }
  convolution_param { num_output: 21 kernel_size: 1
                      weight_filler { type: "gaussian" std: 0.01 } }
}
layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink"
        interp_param { shrink_factor: 8 pad_beg: -1 pad_end: 0 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8_voc12" bottom: "label_shrink"
        include { phase: TRAIN } softmaxloss_param { ignore_label: 255 } }
layer { name: "accuracy" type: "SegAccuracy" bottom: "fc8_voc12" bottom: "label_shrink"
        top: "accuracy" seg_accuracy_param { metric: PixelIOU ignore_label: 255 } }
layer { name: "fc8_interp" type: "Interp" bottom: "fc8_voc12" top: "fc8_interp"
        interp_param { zoom_factor: 8 } }
layer { name: "pad" type: "Padding" bottom: "fc8_interp" top: "padded"
        padding_param { pad_beg: 1 pad_end: 2 } }
layer {
  name: "fc8_mat" type: "MatWrite" bottom: "fc8_interp" include { phase: TEST }
  mat_write_param { prefix: "features/val/fc8/" source: "voc12/list/val_id.txt" strip: 0 period: 1 }
}
"""

MAPPING = {"NET_ID": "deeplab_net", "DATA_ROOT": "/data/VOC2012", "EXP": "voc12",
           "TRAIN_SET": "train_aug", "TEST_SET": "val", "FEATURE_DIR": "features",
           "NUM_LABELS": "21"}


def _write(tmp_path: pathlib.Path, text: str, name: str = "net.prototxt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- placeholders

def test_placeholders_filled_and_comments_left_alone():
    text = 'source: "${EXP}/list/${TEST_SET}.txt"  # was ${OLD}\nnum_output: ${N}\n'
    out = fill_placeholders(text, {"EXP": "voc12", "TEST_SET": "val", "N": "21"}, "f")
    assert out == 'source: "voc12/list/val.txt"  # was ${OLD}\nnum_output: 21\n'
    # a '#' inside a string is not a comment
    out = fill_placeholders('prefix: "a#${X}"\n', {"X": "1"}, "f")
    assert out == 'prefix: "a#1"\n'


def test_placeholders_lists_names_with_the_fields_they_fill():
    text = ('source: "${ROOT}/list/${SET}.txt"  # ${OLD} in a comment\n'
            "layer { name: '${SET}' convolution_param { num_output: ${N} } }\n"
            'prefix: "a#${ROOT}" root_folder: "${ROOT}"\n')
    assert placeholders(text) == {"ROOT": {"source", "prefix", "root_folder"}, "SET": {"source", "name"},
                                  "N": {""}}
    assert placeholders("a: 1\n") == {}
    assert split_comment('prefix: "a#b" # c') == ('prefix: "a#b" ', "# c")
    assert split_comment("x: 'it\\'s #1'") == ("x: 'it\\'s #1'", "")


def test_unfilled_placeholder_names_file_line_and_name(tmp_path):
    with pytest.raises(CaffeError) as e:
        fill_placeholders('a: 1\nb: "${DATA_ROOT}"\n', {}, "train.prototxt")
    assert str(e.value) == ("train.prototxt:2: placeholder ${DATA_ROOT} has no value; "
                            "pass --set DATA_ROOT=...")
    path = _write(tmp_path, FORK_V1)
    with pytest.raises(CaffeError, match=r"net\.prototxt:1: placeholder \$\{NET_ID\}"):
        parse_net(path)
    partial = {k: v for k, v in MAPPING.items() if k != "FEATURE_DIR"}
    line = next(i for i, t in enumerate(FORK_V1.splitlines(), 1) if "${FEATURE_DIR}" in t)
    with pytest.raises(CaffeError, match=rf":{line}: placeholder \$\{{FEATURE_DIR\}}.*--set FEATURE_DIR="):
        parse_net(path, partial)


# ----------------------------------------------------------------------------- errors

def test_malformed_text_error_carries_file_and_line(tmp_path):
    path = _write(tmp_path, 'name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bottom: \n}\n')
    with pytest.raises(CaffeError) as e:
        parse_net(path)
    assert str(e.value).startswith(f"{path}:6:")
    path = _write(tmp_path, 'layer {\n  name: "a"\n', "open.prototxt")
    with pytest.raises(CaffeError, match=r"open\.prototxt:\d+:\d+: .*Expected"):
        parse_net(path)
    with pytest.raises(CaffeError, match=r"^<string>:1:"):
        parse_net("layer { name: 'a' convolution_param { num_output: x } }")


def test_unknown_field_error_names_it(tmp_path):
    path = _write(tmp_path, 'layer {\n  name: "c"\n  convolution_param {\n    kernal_size: 3\n  }\n}\n')
    with pytest.raises(CaffeError) as e:
        parse_net(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:4:5: ") and '"kernal_size"' in msg
    assert "caffe.ConvolutionParameter" in msg and "\n" not in msg


def test_unknown_v1_type_is_an_error_with_line(tmp_path):
    path = _write(tmp_path, 'layers {\n  name: "x"\n  type: CONVOLUTOIN\n}\n')
    with pytest.raises(CaffeError, match=rf"^{path}:3:\d+: .*CONVOLUTOIN"):
        parse_net(path)


def test_missing_file():
    with pytest.raises(CaffeError, match=r"nope\.prototxt: no such file"):
        parse_net("/nonexistent/nope.prototxt")


def test_v0_and_mixed_syntax_are_refused():
    with pytest.raises(CaffeError, match="V0 syntax"):
        parse_net('layers { layer { name: "c" type: "conv" } }')
    with pytest.raises(CaffeError, match="both `layer` and the deprecated `layers`"):
        parse_net('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }')


# ----------------------------------------------------------------------------- upgrade

def test_v1_net_upgrades_to_what_caffe_produced():
    ours = parse_net(GOLDEN / "v1_upgrade" / "v1.prototxt")
    caffe = text_format.Parse((GOLDEN / "v1_upgrade" / "v2_upgraded_by_caffe.prototxt").read_text(),
                              pb.NetParameter())
    assert ours == caffe
    assert not ours.layers and not ours.input and not ours.input_dim
    assert ours.layer[0].type == "Input" and ours.layer[1].param[1].decay_mult == 0


def test_fork_layers_same_in_v1_and_v2_syntax(tmp_path):
    old = parse_net(_write(tmp_path, FORK_V1), MAPPING)
    new = parse_net(FORK_V2)
    assert old == new, format_net(old)
    assert [l.type for l in old.layer] == [
        "ImageSegData", "Convolution", "ReLU", "Convolution", "Interp", "SoftmaxWithLoss",
        "SegAccuracy", "Interp", "Padding", "MatWrite"]
    fc6 = old.layer[1]
    assert fc6.convolution_param.hole == 12 and not fc6.convolution_param.dilation
    assert fc6.HasField("strict_dim") and not fc6.strict_dim
    assert old.layer[0].image_data_param.label_type == pb.ImageDataParameter.PIXEL
    assert old.layer[4].interp_param.pad_beg == -1
    assert list(old.layer[5].softmaxloss_param.ignore_label) == [255]
    assert old.layer[6].seg_accuracy_param.metric == pb.SegAccuracyParameter.PixelIOU
    assert old.layer[9].mat_write_param.prefix == "features/val/fc8/"
    # the upgraded net prints and reads back unchanged
    assert parse_net(format_net(old)) == old


def test_input_shape_and_input_dim_upgrade():
    net = parse_net('name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 5 dim: 7 }\n'
                    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert [l.name for l in net.layer] == ["input", "r"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 5, 7]
    assert list(net.layer[0].top) == ["data"]
    with pytest.raises(CaffeError, match="need 8 input_dim values"):
        parse_net('input: "a"\ninput: "b"\ninput_dim: 1 input_dim: 3 input_dim: 5 input_dim: 5\n')


def test_v1_data_layer_transform_fields_move_to_transform_param():
    net = parse_net('layers { name: "d" type: DATA top: "data"\n'
                    '  data_param { source: "db" batch_size: 4 mirror: true crop_size: 9 } }')
    layer = net.layer[0]
    assert layer.type == "Data"
    assert layer.transform_param.mirror and layer.transform_param.crop_size == 9
    assert not layer.data_param.HasField("mirror") and layer.data_param.batch_size == 4


def test_v1_param_names_and_share_modes():
    net = parse_net('layers { name: "a" type: INNER_PRODUCT param: "w" param: "b"\n'
                    '  blob_share_mode: PERMISSIVE blobs_lr: 3 }')
    p = net.layer[0].param
    assert [x.name for x in p] == ["w", "b"]
    assert p[0].share_mode == pb.ParamSpec.PERMISSIVE and p[0].lr_mult == 3
    assert not p[1].HasField("lr_mult")


def test_batchnorm_with_three_params_is_frozen():
    net = parse_net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } '
                    'param { lr_mult: 1 } param { lr_mult: 1 } }')
    assert all(p.lr_mult == 0 and p.decay_mult == 0 for p in net.layer[0].param)


# ----------------------------------------------------------------------------- solver

def test_solver_parse_golden():
    s = parse_solver(GOLDEN / "solver_multistep" / "solver.prototxt")
    assert s.net == "train.prototxt" and s.lr_policy == "multistep"
    assert list(s.stepvalue) == [2, 5] and s.momentum == pytest.approx(0.8)
    assert s.solver_mode == pb.SolverParameter.CPU and s.type == "SGD"
    assert parse_solver(GOLDEN / "solver_poly" / "solver.prototxt").clip_gradients == 0.5


def test_solver_type_upgrade_and_placeholders(tmp_path):
    path = _write(tmp_path, 'net: "${EXP}/train.prototxt"\nsolver_type: NESTEROV\nbase_lr: 0.001\n',
                  "solver.prototxt")
    s = parse_solver(path, {"EXP": "voc12"})
    assert s.type == "Nesterov" and not s.HasField("solver_type")
    assert s.net == "voc12/train.prototxt"
    assert parse_solver('solver_type: ADAM\nbase_lr: 1').type == "Adam"
    with pytest.raises(CaffeError, match="both solver_type"):
        parse_solver('solver_type: SGD\ntype: "Adam"\n')
    with pytest.raises(CaffeError, match=r"solver\.prototxt:1: placeholder \$\{EXP\}"):
        parse_solver(path)
    with pytest.raises(CaffeError, match=r'^<string>:2:\d+: .*"lr"'):
        parse_solver('base_lr: 0.1\nlr: 3\n')


def test_solver_inline_net_is_upgraded():
    s = parse_solver('train_net_param { layers { name: "r" type: RELU } }')
    assert s.train_net_param.layer[0].type == "ReLU" and not s.train_net_param.layers


# ----------------------------------------------------------------------------- schema

def test_schema_keeps_bvlc_numbers_and_fork_fields():
    def num(msg, name):
        return msg.DESCRIPTOR.fields_by_name[name].number
    assert num(pb.NetParameter, "layer") == 100 and num(pb.NetParameter, "layers") == 2
    assert num(pb.LayerParameter, "convolution_param") == 106
    assert num(pb.LayerParameter, "input_param") == 143
    assert num(pb.LayerParameter, "clip_param") == 148
    assert num(pb.ConvolutionParameter, "dilation") == 18
    assert num(pb.V1LayerParameter, "loss_param") == 42
    assert num(pb.BlobProto, "data") == 5 and num(pb.BlobProto, "double_data") == 8
    assert pb.V1LayerParameter.DECONVOLUTION == 39 and pb.V1LayerParameter.INTERP == 41
    assert pb.V1LayerParameter.MAT_WRITE == 43 and pb.V1LayerParameter.SEG_ACCURACY == 40
    assert num(pb.V1LayerParameter, "interp_param") == 43
    assert num(pb.V1LayerParameter, "strict_dim") == 1003
    assert num(pb.SolverParameter, "solver_type") == 30 and num(pb.SolverParameter, "type") == 40
    # every V1 sub-message moves to a field of the same name and type in LayerParameter
    v2 = pb.LayerParameter.DESCRIPTOR.fields_by_name
    for f in pb.V1LayerParameter.DESCRIPTOR.fields:
        if f.message_type is not None and f.name not in ("blobs", "include", "exclude", "layer"):
            assert v2[f.name].message_type is f.message_type, f.name


def test_generated_module_matches_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    proto_dir = REPO / "caffe" / "proto"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto_dir}",
           f"--python_out={tmp_path}", "caffe.proto"]
    assert protoc and subprocess.run(cmd, capture_output=True).returncode == 0
    assert (tmp_path / "caffe_pb2.py").read_bytes() == (proto_dir / "caffe_pb2.py").read_bytes(), \
        "caffe/proto/caffe_pb2.py is stale: run `make proto`"


def test_missing_required_field_names_layer():
    with pytest.raises(CaffeError, match="missing required field mat_write_param.prefix in layer 'fc8_mat'"):
        parse_net('layers { name: "fc8_mat" type: MAT_WRITE mat_write_param { source: "ids.txt" } }')
