"""The fork's weak-supervision, channel and MatRead layers: parameters as the fork's caffe.proto
numbers them, V1 spellings, what the fork refuses, MatRead on MatWrite's files, and a
weakly-supervised (EM-Adapt style) train net on the synthetic set."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import caffe
from caffe import CaffeError
from caffe.layer.output import blob_to_matlab
from caffe.prototxt import parse_net
from caffe.proto import caffe_pb2 as pb


def net_from(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), caffe.TEST)


def test_fork_field_numbers_and_v1_enums():
    v1 = pb.V1LayerParameter
    fields = v1.DESCRIPTOR.fields_by_name
    expect = {"unique_label_param": 51, "censor_label_param": 52, "adaptive_bias_channel_param": 53,
              "channel_aggregator_param": 54, "ignore_overlay_param": 55, "histogram_param": 56,
              "gain_channel_param": 58, "onehot_param": 59, "bias_channel_param": 50}
    assert {name: fields[name].number for name in expect} == expect
    layer = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert {name: layer[name].number for name in expect} == {k: 2000 + v for k, v in expect.items()}
    enums = {"UNIQUE_LABEL": 48, "CENSOR_LABEL": 49, "ADAPTIVE_BIAS_CHANNEL": 50, "CHANNEL_AGGREGATOR": 51,
             "IGNORE_OVERLAY": 52, "HISTOGRAM": 53, "RELATIVE_ERROR": 54, "GAIN_CHANNEL": 55, "ONEHOT": 56,
             "BIAS_CHANNEL": 47, "DOMINANT_CHANNEL": 46, "MAT_READ": 44}
    assert {k: v1.LayerType.Value(k) for k in enums} == enums
    assert pb.BiasChannelParameter.DESCRIPTOR.fields_by_name["label_type"].number == 4
    # A binary V1 layer written with the fork's numbers reads back here.
    raw = v1(name="b", type=v1.BIAS_CHANNEL)
    raw.bias_channel_param.label_type = pb.BiasChannelParameter.PIXEL
    raw.unique_label_param.max_labels = 7
    again = v1.FromString(raw.SerializeToString())
    assert again.bias_channel_param.label_type == pb.BiasChannelParameter.PIXEL and again.unique_label_param.max_labels == 7


def test_v1_layers_upgrade_to_the_fork_type_names():
    net = parse_net("""
        input: "x" input_dim: 1 input_dim: 3 input_dim: 2 input_dim: 2
        layers { name: "u" type: UNIQUE_LABEL bottom: "x" top: "u" unique_label_param { max_labels: 4 } }
        layers { name: "g" type: GAIN_CHANNEL bottom: "x" top: "g" gain_channel_param { num_output_nz: 1 } }
        layers { name: "o" type: ONEHOT bottom: "x" top: "o" onehot_param { num_labels: 2 } }
    """)
    assert [(l.type, l.HasField("unique_label_param") or l.HasField("gain_channel_param")
             or l.HasField("onehot_param")) for l in net.layer[1:]] == [
        ("UniqueLabel", True), ("GainChannel", True), ("OneHot", True)]


def forward_one(tmp_path, body, **inputs):
    """Run one V2 layer "L" on the given arrays; its top."""
    lines = [f'layer {{ name: "in_{k}" type: "Input" top: "{k}" input_param {{ shape {{ '
             + " ".join(f"dim: {d}" for d in v.shape) + " } } }" for k, v in inputs.items()]
    bottoms = " ".join(f'bottom: "{k}"' for k in inputs)
    net = net_from(tmp_path, "\n".join(lines) + f'\nlayer {{ name: "L" {bottoms} top: "t" {body} }}\n')
    for k, v in inputs.items():
        net.blobs[k].data[...] = v
    net.forward()
    return np.array(net.blobs["t"].data)


def test_hand_computed_values(tmp_path):
    labels = np.array([[[[0, 255], [3, 3]]], [[[1, 1], [255, 1]]]], np.float32)
    top = forward_one(tmp_path, 'type: "UniqueLabel" unique_label_param { max_labels: 4 ignore_label: 255 '
                      'force_label: 2 }', x=labels)
    assert top[:, :, 0, 0].tolist() == [[0, 2, 3, -1], [1, 2, -1, -1]]
    top = forward_one(tmp_path, 'type: "Histogram" histogram_param { num_labels: 4 ignore_label: 255 }', x=labels)
    assert top[:, :, 0, 0].tolist() == [[1, 3, 0, 2], [0, 0, 0, 0]]   # the fork counts all images in row 0
    mask = np.array([[[[2.7, -2.5], [0, 1]]]], np.float32)
    top = forward_one(tmp_path, 'type: "IgnoreOverlay" ignore_overlay_param { ignore_label: 2 }',
                      m=mask, l=np.full((1, 1, 2, 2), 7, np.float32))
    assert top.ravel().tolist() == [2, 7, 7, 7]
    scores = np.zeros((1, 3, 1, 2), np.float32)
    top = forward_one(tmp_path, 'type: "BiasChannel" bias_channel_param { bg_bias: 1 fg_bias: 10 label_type: PIXEL }',
                      s=scores, l=np.array([[[[0, 2]]]], np.float32))
    assert top[0, :, 0].tolist() == [[1, 1], [0, 0], [0, 10]]
    a, b = np.full((1, 1, 2, 2), 3, np.float32), np.full((1, 1, 2, 2), 2, np.float32)
    assert forward_one(tmp_path, 'type: "RelativeError"', a=a, b=b).item() == pytest.approx(0.5)


@pytest.mark.parametrize("body, inputs, message", [
    ('type: "BiasChannel"', {"s": np.zeros((1, 3, 2, 2)), "l": np.array([[[[3.0]]]])}, "unexpected label 3"),
    ('type: "UniqueLabel" unique_label_param { max_labels: 2 }', {"x": np.arange(4.0).reshape(1, 1, 2, 2)},
     "4 distinct labels, more than max_labels 2"),
    ('type: "UniqueLabel" unique_label_param { max_labels: 1 force_label: 0 }', {"x": np.zeros((1, 1, 2, 2))},
     "at least one label more than the forced ones"),
    ('type: "Histogram" histogram_param { num_labels: 2 }', {"x": np.full((1, 1, 2, 2), 0.5)},
     "integer-valued"),
    ('type: "OneHot" onehot_param { num_labels: 3 }', {"x": np.zeros((1, 2, 2, 2))}, "less than or equal"),
    ('type: "DominantChannel" dominant_channel_param { top_k: 3 }', {"x": np.zeros((1, 3, 2, 2))},
     "must be less than the number of channels"),
    ('type: "GainChannel" gain_channel_param { num_output_nz: 1 }', {"x": np.zeros((1, 3, 2, 2))},
     "gain filler"),
    ('type: "AdaptiveBiasChannel" adaptive_bias_channel_param { fg_portion: 1.5 }',
     {"s": np.zeros((1, 3, 2, 2)), "l": np.zeros((1, 2, 1, 1))}, r"fg_portion needs to be in \[0, 1\]"),
])
def test_what_the_fork_refuses_is_one_error_naming_the_layer(tmp_path, body, inputs, message):
    with pytest.raises(CaffeError, match=message) as err:
        forward_one(tmp_path, body, **{k: np.asarray(v, np.float32) for k, v in inputs.items()})
    assert "layer 'L'" in str(err.value)


def test_label_bottoms_refuse_force_backward(tmp_path):
    text = ('force_backward: true\nlayer { name: "i" type: "Input" top: "s" top: "l" input_param { '
            'shape { dim: 1 dim: 3 dim: 2 dim: 2 } shape { dim: 1 dim: 2 dim: 1 dim: 1 } } }\n'
            'layer { name: "L" type: "BiasChannel" bottom: "s" bottom: "l" top: "t" }\n')
    net = net_from(tmp_path, text)
    net.blobs["l"].data[...] = [[[[0]], [[2]]]]
    net.forward()
    with pytest.raises(CaffeError, match="cannot backpropagate to bottom 1 .the label input"):
        net.backward()


def test_gain_channel_projects_its_gains_and_its_gradient(tmp_path):
    text = ('force_backward: true\nlayer { name: "i" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 dim: 1 dim: 2 } } }\n'
            'layer { name: "L" type: "GainChannel" bottom: "x" top: "t" gain_channel_param { num_output_nz: 2 '
            'drift: 0.5 gain_filler { type: "constant" value: 1 } } }\n')
    net = net_from(tmp_path, text)
    net.params["L"][0].data[...] = np.array([4.0, -1.0, 2.0, 2.0]).reshape(1, 4, 1, 1)
    x = np.arange(8, dtype=np.float32).reshape(1, 4, 1, 2)
    net.blobs["x"].data[...] = x
    net.forward()
    gain = np.array([4.0, 1e-3, 2.0, 2.0], np.float32)
    gain = gain * 4 / gain.sum()
    np.testing.assert_allclose(net.params["L"][0].data.ravel(), gain, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["t"].data, x * gain.reshape(1, 4, 1, 1), rtol=1e-6)
    net.backward(t=np.ones((1, 4, 1, 2), np.float32))
    grad = x.sum(axis=(0, 2, 3)) + 0.5 * (gain < np.sort(gain)[::-1][1])
    np.testing.assert_allclose(net.params["L"][0].diff.ravel(), grad - grad.mean(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.blobs["x"].diff, np.broadcast_to(gain.reshape(1, 4, 1, 1), x.shape), rtol=1e-6)


def test_adaptive_bias_channel_by_hand(tmp_path):
    # One image, background and class 2 present, 1 x 4 pixels; portions 0.5 -> nth = 2.
    s = np.array([[[[1, 0, 3, 2]], [[5, 5, 5, 5]], [[0, 2, 1, 0]]]], np.float32)
    top = forward_one(tmp_path, 'type: "AdaptiveBiasChannel" adaptive_bias_channel_param { bg_portion: 0.5 '
                      'fg_portion: 0.5 margin_others: 0.5 }', s=s, l=np.array([[[[0]], [[2]]]], np.float32))
    t = s[0, :, 0].copy()
    floor = np.minimum(t[0], t[2])
    t[1] = np.where(t[1] > floor, floor - 0.5, t[1])
    best = np.maximum(t[0], t[2])
    mean0 = best.mean()
    for c in (0, 2):
        t[c] += np.sort(best - t[c])[2]
        best = np.maximum(best, t[c])
    t += mean0 - best.mean()
    np.testing.assert_allclose(top[0, :, 0], t, rtol=1e-6)


def test_mat_read_reads_what_mat_write_writes(tmp_path):
    import scipy.io
    items = [np.random.default_rng(k).normal(size=(2, 3, 4)).astype(np.float32) for k in range(3)]
    for k, chw in enumerate(items):
        scipy.io.savemat(tmp_path / f"f_{k}x_blob_0.mat", {"data": blob_to_matlab(chw)})
    (tmp_path / "list.txt").write_text("".join(f"{k}x.jpg\n" for k in range(3)))
    text = (f'layer {{ name: "L" type: "MatRead" top: "t" mat_read_param {{ prefix: "{tmp_path}/f_" '
            f'source: "{tmp_path}/list.txt" strip: 4 batch_size: 2 }} }}\n')
    net = net_from(tmp_path, text)
    assert net.blobs["t"].data.shape == (2, 2, 3, 4)
    net.forward()
    np.testing.assert_array_equal(net.blobs["t"].data, np.stack(items[:2]))
    net.forward()   # the ids wrap around
    np.testing.assert_array_equal(net.blobs["t"].data, np.stack([items[2], items[0]]))
    scipy.io.savemat(tmp_path / "f_1x_blob_0.mat", {"data": blob_to_matlab(items[1]).astype(np.float64)})
    with pytest.raises(CaffeError, match="single precision"):
        net.forward()


def make_synthetic(root, n=4, size=40):
    """A few images of the synthetic set (deeplab.data.synthetic) and their list."""
    from deeplab.data import synthetic
    from deeplab.labels import write_label
    (root / "img").mkdir()
    (root / "lab").mkdir()
    lines = []
    for i in range(n):
        img, lab = synthetic.render(3, i, size)
        cv2.imwrite(str(root / "img" / f"{i}.png"), img[:, :, ::-1])
        write_label(root / "lab" / f"{i}.png", lab)
        lines.append(f"/img/{i}.png /lab/{i}.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


WEAK_NET = """name: "weak"
layer { name: "data" type: "ImageSegData" top: "data" top: "label"
  image_data_param { root_folder: "ROOT" source: "ROOT/train.txt" batch_size: 2 shuffle: true label_type: PIXEL }
  transform_param { crop_size: 33 mean_value: 104 mean_value: 117 mean_value: 123 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc8" type: "Convolution" bottom: "conv1" top: "fc8"
  convolution_param { num_output: 5 kernel_size: 1 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink" interp_param { shrink_factor: 2 } }
layer { name: "labels" type: "UniqueLabel" bottom: "label_shrink" top: "labels"
  unique_label_param { max_labels: 6 ignore_label: 255 } }
layer { name: "fc8_bias" type: "BiasChannel" bottom: "fc8" bottom: "labels" top: "fc8_bias"
  bias_channel_param { bg_bias: 1 fg_bias: 2 } }
layer { name: "fc8_adapt" type: "AdaptiveBiasChannel" bottom: "fc8_bias" bottom: "labels" top: "fc8_adapt"
  adaptive_bias_channel_param { bg_portion: 0.4 fg_portion: 0.2 } }
layer { name: "estep" type: "ArgMax" bottom: "fc8_adapt" top: "estep" argmax_param { axis: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "estep" top: "loss"
  propagate_down: true propagate_down: false }
layer { name: "hist" type: "Histogram" bottom: "label_shrink" top: "hist"
  histogram_param { num_labels: 5 ignore_label: 255 } }
layer { name: "silence" type: "Silence" bottom: "hist" }
"""


def test_weakly_supervised_net_builds_and_trains_on_the_synthetic_set(tmp_path):
    """No train net of the release uses UNIQUE_LABEL (its run_pascal.sh's weak/strong TRAIN2
    stage reuses train.prototxt): this is an EM-Adapt net, image-level labels from UniqueLabel
    biasing the scores that give the E-step's pseudo labels. The loss takes no gradient into
    its labels (propagate_down: false): BVLC's ArgMax and SoftmaxWithLoss abort there, the fork's
    ignored it."""
    make_synthetic(tmp_path)
    (tmp_path / "train.prototxt").write_text(WEAK_NET.replace("ROOT", str(tmp_path)))
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path}/train.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n'
        f'max_iter: 3\ndisplay: 0\nsnapshot: 0\nsnapshot_prefix: "{tmp_path}/snap"\nrandom_seed: 1\nsolver_mode: CPU\n')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    shapes = {name: tuple(net.blobs[name].data.shape) for name in ("fc8", "label_shrink", "labels", "fc8_adapt",
                                                                   "estep", "hist")}
    assert shapes == {"fc8": (2, 5, 17, 17), "label_shrink": (2, 1, 17, 17), "labels": (2, 6, 1, 1),
                      "fc8_adapt": (2, 5, 17, 17), "estep": (2, 1, 17, 17), "hist": (2, 5, 1, 1)}
    before = np.array(net.params["fc8"][0].data)
    solver.step(3)
    assert solver.iter == 3 and np.isfinite(net.blobs["loss"].data).all()
    assert not np.array_equal(before, net.params["fc8"][0].data)
    labels = net.blobs["labels"].data[:, :, 0, 0]
    for n in range(2):
        present = sorted(set(np.unique(net.blobs["label_shrink"].data[n])) - {255})
        assert labels[n].tolist() == present + [-1] * (6 - len(present))
    assert set(np.unique(net.blobs["estep"].data)) <= set(labels[labels >= 0].tolist())
    assert net.blobs["hist"].data[0].sum() == (net.blobs["label_shrink"].data != 255).sum()
    with torch.no_grad():
        assert torch.isfinite(torch.as_tensor(net.blobs["fc8_adapt"].data)).all()
