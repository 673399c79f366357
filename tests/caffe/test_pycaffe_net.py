"""pycaffe's Net on the engine: blob memory, names, forward/backward with Caffe's rules."""
from __future__ import annotations

import numpy as np
import pytest

import caffe
from caffe import CaffeError

# x -> conv (1x1, w=2, b=1) -> relu (in place) -> sum = relu + 3 x
BRANCH = """name: 'branch' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 1 dim: 1 dim: 3 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
  convolution_param { num_output: 1 kernel_size: 1
    weight_filler { type: 'constant' value: 2 } bias_filler { type: 'constant' value: 1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }
layer { name: 'sum' type: 'Eltwise' bottom: 'conv' bottom: 'data' top: 'sum'
  eltwise_param { operation: SUM coeff: 1 coeff: 3 } }
"""

# scores = conv(data) (identity weights), loss weight 2; no force_backward
LOSS = """name: 'loss'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
  input_param { shape { dim: 1 dim: 2 dim: 1 dim: 1 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }
layer { name: 'score' type: 'Convolution' bottom: 'data' top: 'score'
  convolution_param { num_output: 2 kernel_size: 1 bias_filler { type: 'constant' value: 0 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'score' bottom: 'label' top: 'loss' loss_weight: 2 }
"""


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def branch(tmp_path):
    return caffe.Net(write(tmp_path, BRANCH), caffe.TEST)


def test_names_and_dicts(branch):
    assert list(branch.blobs) == ["data", "conv", "sum"]
    assert branch._layer_names == ["data", "conv", "relu", "sum"]
    assert branch.inputs == ["data"] and branch.outputs == ["sum"]
    assert list(branch.params) == ["conv"] and len(branch.params["conv"]) == 2
    assert list(branch.layer_dict) == branch._layer_names
    assert [layer.type for layer in branch.layers] == ["Input", "Convolution", "ReLU", "Eltwise"]
    assert branch.top_names["relu"] == ["conv"] and branch.bottom_names["sum"] == ["conv", "data"]
    assert branch.blob_loss_weights == {"data": 0.0, "conv": 0.0, "sum": 0.0}
    blob = branch.blobs["data"]
    assert blob.shape == (1, 1, 1, 3) and blob.count == 3
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 1, 3)


def test_forward_reads_and_writes_blob_memory(branch):
    branch.blobs["data"].data[...] = [-1, 2, 3]
    out = branch.forward()
    # conv = 2x + 1 = [-1, 5, 7]; relu -> [0, 5, 7]; sum = relu + 3x = [-3, 11, 16]
    assert out["sum"] is branch.blobs["sum"].data
    np.testing.assert_allclose(out["sum"].ravel(), [-3, 11, 16])
    np.testing.assert_allclose(branch.blobs["conv"].data.ravel(), [0, 5, 7])
    branch.params["conv"][0].data[...] = 1  # the weights are the net's memory too
    np.testing.assert_allclose(branch.forward(data=np.array([[[[1, 1, 1]]]]))["sum"].ravel(), [5, 5, 5])


def test_backward_sets_bottom_diffs_and_accumulates_param_diffs(branch):
    branch.blobs["data"].data[...] = [-1, 2, 3]
    branch.forward()
    diffs = branch.backward(sum=np.ones((1, 1, 1, 3), np.float32))
    # data feeds two layers: 3 (eltwise coeff) + relu mask [0, 1, 1] x w=2
    np.testing.assert_allclose(diffs["data"].ravel(), [3, 5, 5])
    assert branch.params["conv"][0].diff.ravel().tolist() == [5.0]  # sum of mask * x = 2 + 3
    assert branch.params["conv"][1].diff.ravel().tolist() == [2.0]
    branch.backward()
    np.testing.assert_allclose(branch.blobs["data"].diff.ravel(), [3, 5, 5])  # bottoms are set
    assert branch.params["conv"][0].diff.ravel().tolist() == [10.0]  # params accumulate
    branch.clear_param_diffs()
    assert not branch.params["conv"][0].diff.any() and not branch.params["conv"][1].diff.any()


def test_forward_start_end_and_backward_end(branch):
    branch.blobs["conv"].data[...] = [1, -2, 4]
    out = branch.forward(start="sum", end="sum")
    branch.blobs["data"].data[...] = 0
    assert set(out) == {"sum"}
    np.testing.assert_allclose(out["sum"].ravel(), [1, -2, 4])
    branch.blobs["sum"].diff[...] = [1, 2, 3]
    got = branch.backward(start="sum", end="sum")
    assert set(got) == {"conv", "data"}
    np.testing.assert_allclose(got["data"].ravel(), [3, 6, 9])


def test_loss_weight_is_the_loss_top_diff_and_backward_needs_params(tmp_path):
    net = caffe.Net(write(tmp_path, LOSS), caffe.TRAIN)
    net.params["score"][0].data[...] = np.eye(2).reshape(2, 2, 1, 1)
    assert net.blobs["loss"].diff.item() == 2.0 and net.blob_loss_weights["loss"] == 2.0
    net.blobs["data"].data[...] = 1
    net.blobs["label"].data[...] = 0
    out = net.forward()
    assert out["loss"] == pytest.approx(2 * np.log(2) / 2 * 2 / 2)  # softmax(1,1) -> -log .5 = ln 2
    net.backward()
    # d(2 * loss)/d score = 2 * (p - onehot) = [-1, 1]; weight diff = outer([-1, 1], x=[1, 1])
    np.testing.assert_allclose(net.blobs["score"].diff.ravel(), [-1, 1], atol=1e-6)
    np.testing.assert_allclose(net.params["score"][0].diff.reshape(2, 2), [[-1, -1], [1, 1]], atol=1e-6)
    np.testing.assert_allclose(net.params["score"][1].diff, [-1, 1], atol=1e-6)
    assert not net.blobs["data"].diff.any()  # an Input top needs no backward without force_backward


def test_lr_mult_zero_and_propagate_down(tmp_path):
    text = LOSS.replace("bias_filler { type: 'constant' value: 0 } } }",
                        "bias_filler { type: 'constant' value: 0 } } param { lr_mult: 0 } param { lr_mult: 0 } }")
    net = caffe.Net(write(tmp_path, text), caffe.TRAIN)
    net.blobs["label"].data[...] = 0
    net.forward()
    net.backward()  # nothing needs backward: no learnable blob is trained
    assert not net.params["score"][0].diff.any() and not net.blobs["score"].diff.any()
    chained = LOSS.replace("layer { name: 'score'", """layer { name: 'c1' type: 'Convolution' bottom: 'data' top: 'c1'
  convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: 'constant' value: 1 } } }
layer { name: 'score'""").replace("bottom: 'data' top: 'score'", "bottom: 'c1' top: 'score' propagate_down: false")
    net = caffe.Net(write(tmp_path, chained, "pd.prototxt"), caffe.TRAIN)
    net.blobs["data"].data[...] = 1
    net.blobs["label"].data[...] = 0
    net.forward()
    net.backward()
    assert net.params["score"][0].diff.any()
    assert not net.blobs["c1"].diff.any() and not net.params["c1"][0].diff.any()  # cut by propagate_down
    # force_backward wins over propagate_down: false (net.cpp ORs AllowForceBackward in)
    forced = BRANCH.replace("bottom: 'data' top: 'sum'", "bottom: 'data' top: 'sum' propagate_down: true propagate_down: false")
    net = caffe.Net(write(tmp_path, forced, "forced.prototxt"), caffe.TEST)
    net.blobs["data"].data[...] = [-1, 2, 3]
    net.forward()
    net.backward(sum=np.ones((1, 1, 1, 3), np.float32))
    np.testing.assert_allclose(net.blobs["data"].diff.ravel(), [3, 5, 5])


def test_outputs_sorted_and_in_place_top_is_an_output(tmp_path):
    text = """layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 2 dim: 2 dim: 2 } } }
layer { name: 'b' type: 'ReLU' bottom: 'x' top: 'x' }
layer { name: 'a' type: 'Softmax' bottom: 'x' top: 'prob' }
layer { name: 'z' type: 'Pooling' bottom: 'x' top: 'pool' pooling_param { pool: MAX kernel_size: 2 } }"""
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    assert net.outputs == ["pool", "prob"]  # by name, as Caffe's std::set


def test_pooling_backward_routes_to_the_max_and_concat_splits(tmp_path):
    text = """force_backward: true
layer { name: 'in' type: 'Input' top: 'x' top: 'y' input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
layer { name: 'pool' type: 'Pooling' bottom: 'x' top: 'p' pooling_param { pool: MAX kernel_size: 2 } }
layer { name: 'cat' type: 'Concat' bottom: 'x' bottom: 'y' top: 'c' }"""
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    net.blobs["x"].data[...] = [[1, 3], [2, 0]]
    net.blobs["y"].data[...] = 5
    out = net.forward()
    assert out["p"].item() == 3 and out["c"].shape == (1, 2, 2, 2)
    net.blobs["p"].diff[...] = 1
    net.blobs["c"].diff[...] = np.arange(8).reshape(1, 2, 2, 2)
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff.ravel(), [0, 2, 2, 3])  # [0,1,2,3] + max at 3
    np.testing.assert_allclose(net.blobs["y"].diff.ravel(), [4, 5, 6, 7])


def test_dropout_backward_uses_the_forward_mask(tmp_path):
    text = """force_backward: true
layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 1 dim: 1 dim: 200 } } }
layer { name: 'drop' type: 'Dropout' bottom: 'x' top: 'x' dropout_param { dropout_ratio: 0.5 } }"""
    net = caffe.Net(write(tmp_path, text), caffe.TRAIN)
    net.blobs["x"].data[...] = 1
    kept = net.forward()["x"] > 0
    assert 0 < kept.sum() < 200
    net.blobs["x"].diff[...] = 1
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, np.where(kept, 2.0, 0.0))


def test_reshape_interp_and_crop(tmp_path):
    text = """layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
layer { name: 'up' type: 'Interp' bottom: 'x' top: 'up' interp_param { zoom_factor: 2 } }
layer { name: 'crop' type: 'Crop' bottom: 'up' bottom: 'x' top: 'c' crop_param { axis: 2 offset: 1 } }"""
    net = caffe.Net(write(tmp_path, text), caffe.TEST)
    assert net.blobs["up"].shape == (1, 1, 3, 3)  # Interp: (2 - 1) * 2 + 1
    net.blobs["x"].data[...] = [[0, 2], [4, 6]]
    out = net.forward()
    np.testing.assert_allclose(out["c"][0, 0], [[3, 4], [5, 6]])  # rows [0 1 2] [2 3 4] [4 5 6], cropped at 1
    net.blobs["x"].reshape(1, 1, 3, 3)
    net.reshape()
    assert net.blobs["up"].shape == (1, 1, 5, 5) and net.blobs["c"].shape == (1, 1, 3, 3)


def test_constructor_forms_save_copy_and_share(tmp_path, branch):
    path = write(tmp_path, BRANCH)
    branch.params["conv"][0].data[...] = 7
    weights = str(tmp_path / "w.caffemodel")
    branch.save(weights)
    for net in (caffe.Net(path, weights, caffe.TEST), caffe.Net(path, caffe.TEST, weights=weights)):
        assert net.params["conv"][0].data.item() == 7
    other = caffe.Net(path, caffe.TEST)
    other.copy_from(weights)
    assert other.params["conv"][0].data.item() == 7
    third = caffe.Net(path, phase=caffe.TEST)
    third.share_with(branch)
    branch.params["conv"][0].data[...] = 9
    assert third.params["conv"][0].data.item() == 9
    with pytest.raises(TypeError):
        caffe.Net(path, 7)          # not a phase (Net(path) is the fork's form: tests/caffe/test_pycaffe_legacy.py)
    with pytest.raises(CaffeError, match="Could not open file"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)
    with pytest.raises(CaffeError, match="MemoryData"):
        branch.set_input_arrays(np.zeros((1, 1, 1, 3), np.float32), np.zeros(1, np.float32))


def test_save_and_load_hdf5(tmp_path, branch):
    """Net.save_hdf5 / load_hdf5 (Caffe's HDF5 weights) carry values and diffs; copy_from reads
    an HDF5 file too, as CopyTrainedLayersFrom does."""
    import h5py
    branch.params["conv"][0].data[...] = 5
    branch.params["conv"][1].diff[...] = 0.25
    h5 = str(tmp_path / "w.h5")
    branch.save_hdf5(h5)
    with h5py.File(h5) as f:
        assert f["data/conv/0"][...].item() == 5 and f["diff/conv/1"][...].item() == 0.25
        assert list(f["data/relu"]) == []
    other = caffe.Net(write(tmp_path, BRANCH), caffe.TEST)
    other.load_hdf5(h5)
    assert other.params["conv"][0].data.item() == 5
    third = caffe.Net(write(tmp_path, BRANCH), caffe.TEST, weights=h5)
    assert third.params["conv"][0].data.item() == 5
    with pytest.raises(CaffeError, match="Could not open file"):
        other.load_hdf5(str(tmp_path / "missing.h5"))


def test_forward_all_pads_the_last_batch(tmp_path):
    net = caffe.Net(write(tmp_path, BRANCH.replace("dim: 1 dim: 1 dim: 1 dim: 3", "dim: 2 dim: 1 dim: 1 dim: 3")),
                    caffe.TEST)
    x = np.arange(15, dtype=np.float32).reshape(5, 1, 1, 3)
    out = net.forward_all(data=x)["sum"]
    assert out.shape == (5, 1, 1, 3)
    np.testing.assert_allclose(out, np.maximum(2 * x + 1, 0) + 3 * x)
    outs, diffs = net.forward_backward_all(data=x, sum=np.ones_like(x))
    assert diffs["data"].shape == (5, 1, 1, 3)
    np.testing.assert_allclose(diffs["data"], np.where(2 * x + 1 > 0, 5.0, 3.0))


def test_callbacks_run_per_layer(branch):
    seen = []
    branch.before_forward(lambda i: seen.append(("f", i)))
    branch.after_backward(lambda i: seen.append(("b", i)))
    branch.forward()
    branch.backward()
    assert seen == [("f", 0), ("f", 1), ("f", 2), ("f", 3), ("b", 3), ("b", 2), ("b", 1), ("b", 0)]


def test_mode_and_type_list():
    caffe.set_mode_cpu()
    caffe.set_random_seed(3)
    types = caffe.layer_type_list()
    assert types == sorted(types) and {"Convolution", "Python", "Input"} <= set(types)
    assert caffe.has_nccl() is True     # caffe.NCCL: torch.distributed


CLASSIFY = """layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: 'id' type: 'Convolution' bottom: 'data' top: 'id' convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: 'pool' type: 'Pooling' bottom: 'id' top: 'pool' pooling_param { pool: AVE global_pooling: true } }
layer { name: 'prob' type: 'Softmax' bottom: 'pool' top: 'prob' }"""


def test_classifier_and_detector(tmp_path):
    import cv2
    path = write(tmp_path, CLASSIFY)
    weights = str(tmp_path / "none.caffemodel")
    ident = caffe.Net(path, caffe.TEST)
    ident.params["id"][0].data[...] = np.eye(3).reshape(3, 3, 1, 1)
    ident.params["id"][1].data[...] = 0
    ident.save(weights)
    clf = caffe.Classifier(path, weights, image_dims=(6, 6), raw_scale=255, channel_swap=(2, 1, 0))
    red = np.zeros((6, 6, 3), np.float32)
    red[..., 0] = 0.02  # RGB in [0, 1]; x255 -> 5.1 in the last (R) channel after the BGR swap
    for ten in (True, False):
        p = clf.predict([red, red], oversample=ten)
        e = np.exp([0, 0, 5.1])
        np.testing.assert_allclose(p.reshape(2, 3), np.tile(e / e.sum(), (2, 1)), rtol=1e-5)
    image = str(tmp_path / "im.png")
    cv2.imwrite(image, np.full((8, 8, 3), 255, np.uint8))
    det = caffe.Detector(path, weights, raw_scale=1)
    found = det.detect_windows([(image, [(0, 0, 4, 4), (2, 2, 8, 8)])])
    assert [tuple(d["window"]) for d in found] == [(0, 0, 4, 4), (2, 2, 8, 8)]
    np.testing.assert_allclose(found[0]["prediction"], [1 / 3] * 3, rtol=1e-5)


TOPLESS = """layer { name: 'in' type: 'Input' top: 'x' top: 'lab'
  input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: 'l1' type: 'SoftmaxWithLoss' bottom: 'x' bottom: 'lab' }
layer { name: 'l2' type: 'SoftmaxWithLoss' bottom: 'x' bottom: 'lab' loss_weight: 3 }
layer { name: 'p' type: 'Softmax' bottom: 'x' top: 'prob' }"""


def test_automatic_tops_are_caffe_blobs_named_automatic(tmp_path):
    # net.cpp AppendTop: an anonymous top is a blob named "(automatic)", kept out of
    # available_blobs (so never an output or a bottom); pycaffe's blobs dict zips the names,
    # so the repeated name keeps its first position and the last such blob.
    net = caffe.Net(write(tmp_path, TOPLESS), caffe.TEST)
    assert net._blob_names == ["x", "lab", "(automatic)", "(automatic)", "prob"]
    assert list(net.blobs) == ["x", "lab", "(automatic)", "prob"]
    assert net.blobs["(automatic)"] is net._blobs[3]
    assert net.top_names["l1"] == ["(automatic)"] and net.top_names["l2"] == ["(automatic)"]
    assert net._top_ids(1) == [2] and net._top_ids(2) == [3]
    assert net.outputs == ["prob"] and net._outputs == [4]
    assert net._blob_loss_weights == [0.0, 0.0, 1.0, 3.0, 0.0]
    assert net.blob_loss_weights["(automatic)"] == 3.0
    net.blobs["x"].data[...] = 0
    net.blobs["lab"].data[...] = 1
    out = net.forward()
    assert set(out) == {"prob"}
    assert net._blobs[2].data.item() == pytest.approx(np.log(3))              # l1, uniform softmax
    assert net.blobs["(automatic)"].data.item() == pytest.approx(np.log(3))   # l2's own top
    assert net._forward(0, 3) == pytest.approx(4 * np.log(3))                # 1 x l1 + 3 x l2


SPLIT_PD = """layer { name: 'in' type: 'Input' top: 'x' top: 't' input_param { shape { dim: 1 dim: 1 dim: 1 dim: 2 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'x' top: 'c' propagate_down: true
  convolution_param { num_output: 1 kernel_size: 1 weight_filler { type: 'constant' value: 2 } } }
layer { name: 'pow' type: 'Power' bottom: 'x' top: 'p' }
layer { name: 'l1' type: 'EuclideanLoss' bottom: 'c' bottom: 't' top: 'l1' }
layer { name: 'l2' type: 'EuclideanLoss' bottom: 'p' bottom: 't' top: 'l2' }"""


def test_backward_follows_the_engines_plan_through_an_implicit_split(tmp_path):
    # x feeds two layers, so Caffe puts a Split in front of them; conv's propagate_down: true
    # makes conv write its bottom diff into the split's top, but the Split needs no backward
    # (x, an Input top, needs none), so x's own diff stays 0 in Caffe.
    net = caffe.Net(write(tmp_path, SPLIT_PD), caffe.TRAIN)
    engine = net._net
    assert engine.bottom_need_backward[1] == [True] and engine.bottom_receives_diff[1] == [False]
    assert net._graph.layer_need is engine.layer_need_backward
    net.blobs["x"].data[...] = [1, 2]
    net.forward()
    net.backward()
    assert not net.blobs["x"].diff.any()
    # conv's weight diff: d/dw 1/2 sum (w x - t)^2 = sum (w x - t) x = 2*1 + 4*2 (t = 0, w = 2)
    assert net.params["conv"][0].diff.item() == pytest.approx(10.0)


def test_from_engine_takes_force_backward_from_the_engine(tmp_path):
    from caffe.net import Net as EngineNet
    engine = EngineNet(write(tmp_path, BRANCH), "TEST")
    assert caffe.Net.from_engine(engine)._graph.layer_need == [True] * 4   # force_backward: true
    assert caffe.Net.from_engine(engine, True)._net is engine
    with pytest.raises(CaffeError, match="was built with force_backward: true"):
        caffe.Net.from_engine(engine, False)


def test_shape_mismatch_after_blob_reshape_names_the_layer_and_both_shapes(tmp_path, branch):
    branch.blobs["data"].reshape(1, 2, 1, 3)        # conv's weights take 1 channel
    with pytest.raises(CaffeError, match=r"layer 'conv' \(Convolution\): bottom shape\(s\) data \(1, 2, 1, 3\) "
                                         r"do not fit the layer's blob shape\(s\) \(1, 1, 1, 1\), \(1,\)"):
        branch.forward()
    net = caffe.Net(write(tmp_path, CLASSIFY), caffe.TEST)
    net.params["id"][0].reshape(4, 3, 1, 1)         # weight_manupilator.py's surgery, then a forward
    with pytest.raises(CaffeError, match=r"layer 'id' \(Convolution\): .*\(4, 3, 1, 1\), \(3,\)"):
        net.forward()
