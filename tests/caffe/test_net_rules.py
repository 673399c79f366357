"""Caffe's net-building rules (net.cpp, layer.hpp) and the engine semantics of issue 15."""
import math

import numpy as np
import pytest
import torch

from caffe import CaffeError
from caffe.model_io import LayerBlobs
from caffe.net import Net

DATA = 'layer { name: "data" type: "Input" top: "data" top: "label" ' \
       'input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }\n'
CONV = 'layer { name: "%s" type: "Convolution" bottom: "%s" top: "%s" %s' \
       'convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }\n'


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"data": torch.randn(2, 3, 5, 5, generator=g), "label": torch.randint(0, 3, (2, 1, 5, 5), generator=g).float()}


# ------------------------------------------------------------------ AutoTopBlobs
def test_topless_loss_gets_an_automatic_top_whose_loss_counts():
    text = DATA + CONV % ("score", "data", "score", "") + \
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" }\n'
    net = Net(text, "TRAIN")
    assert net.layer("loss").top_names == ["(automatic)"]
    assert net.loss_weights == {"(automatic)": 1.0}
    assert "(automatic)" not in net.output_names and net.output_names == []
    assert net.blob_names == ["data", "label", "score", "(automatic)"]
    blobs = net(inputs())
    named = Net(text.replace('bottom: "label" }', 'bottom: "label" top: "l" }'), "TRAIN")
    named.load_state_dict(net.state_dict())
    assert net.loss(blobs).item() == pytest.approx(named.loss(named(inputs())).item())


def test_two_topless_losses_both_count_and_loss_weight_counts_automatic_tops():
    text = DATA + CONV % ("score", "data", "score", "") + \
        'layer { name: "l1" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" }\n' \
        'layer { name: "l2" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" loss_weight: 0.5 }\n'
    net = Net(text, "TRAIN")
    assert sorted(net.loss_weights.values()) == [0.5, 1.0]
    blobs = net(inputs())
    single = blobs["(automatic)"].item()
    assert net.loss(blobs).item() == pytest.approx(1.5 * single)


def test_automatic_top_is_not_a_usable_bottom_and_data_layer_gets_its_third_top():
    text = DATA + CONV % ("score", "data", "score", "") + \
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" }\n' \
        'layer { name: "s" type: "Silence" bottom: "(automatic)" }\n'
    with pytest.raises(CaffeError, match=r"bottom '\(automatic\)' is not produced"):
        Net(text, "TRAIN")
    seg = ('layer { name: "d" type: "ImageSegData" top: "data" top: "label" image_data_param { source: "x" '
           'batch_size: 2 is_color: false } transform_param { crop_size: 9 } }')
    net = Net(seg, "TRAIN")
    assert net.layer("d").top_names == ["data", "label", "(automatic)"]
    assert net.layer("d").top_shapes == [(2, 1, 9, 9), (2, 1, 9, 9), (2, 1, 1, 2)]   # is_color: false -> 1 channel
    assert net.input_names == ["data", "label"]


def test_blob_contract_is_checked_with_the_layer_named():
    with pytest.raises(CaffeError, match=r"layer 'r' \(ReLU\): takes exactly 1 bottom blob\(s\), got 2"):
        Net(DATA + 'layer { name: "r" type: "ReLU" bottom: "data" bottom: "label" top: "r" }', "TEST")
    with pytest.raises(CaffeError, match=r"layer 'loss' \(SoftmaxWithLoss\): takes at most 2 top blob"):
        Net(DATA + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" '
                   'top: "a" top: "b" top: "c" }', "TRAIN")
    with pytest.raises(CaffeError, match=r"takes as many tops as bottoms"):
        Net(DATA + CONV % ("c", "data", "c", "bottom: \"label\" "), "TEST")


def test_convolution_takes_several_bottoms_with_shared_weights():
    text = DATA + 'layer { name: "c" type: "Convolution" bottom: "data" bottom: "data2" top: "a" top: "b" ' \
                  'convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" } } }'
    text = text.replace('top: "label" ', 'top: "data2" ').replace("dim: 1 dim: 5", "dim: 3 dim: 5")
    net = Net(text, "TEST")
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        out = net({"data": x, "data2": 2 * x})
    assert torch.allclose(out["b"] - net.layer("c").blobs[1].view(1, 2, 1, 1),
                          2 * (out["a"] - net.layer("c").blobs[1].view(1, 2, 1, 1)), atol=1e-5)


def test_two_tops_need_loss_weight_per_top_and_softmax_loss_refuses_a_second_top_as_caffe_does():
    base = DATA + CONV % ("score", "data", "score", "")
    with pytest.raises(CaffeError, match=r"loss_weight must be unspecified or given once per top.*loss_weight: 1 loss_weight: 0"):
        Net(base + 'layer { name: "h" type: "Input" top: "h" input_param { shape { dim: 3 dim: 3 } } }\n'
                   'layer { name: "l" type: "InfogainLoss" bottom: "score" bottom: "label" bottom: "h" top: "l" top: "p" }',
            "TRAIN")
    for weights in ("", "loss_weight: 1 loss_weight: 0"):   # BVLC aborts on both (tests/fixtures/golden/bvlc)
        with pytest.raises(CaffeError, match=r"'l' \(SoftmaxWithLoss\): a second \(probability\) top is refused"):
            Net(base + 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "l" top: "p" '
                       f'{weights} }}', "TRAIN")


# ------------------------------------------------------------------ duplicate names
DUP = DATA + CONV % ("dup", "data", "a", "") + CONV % ("dup", "a", "b", "") + \
    'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "fused" }\n' \
    'layer { name: "fused" type: "Silence" bottom: "fused" }\n'


def test_duplicate_layer_names_are_accepted_and_weights_go_to_the_first():
    net = Net(DUP, "TEST")
    assert net.layer_names == ["data", "dup", "dup", "sum", "fused"]
    second = net.layers[2]
    assert net.layer("dup") is second                      # layer_by_name: the last of the name
    before = second.blobs[0].detach().clone()
    w = np.full((3, 3, 1, 1), 7.0, np.float32)
    report = net.copy_from([LayerBlobs("dup", "Convolution", [w, np.zeros(3, np.float32)])])
    assert report["copied"] == ["dup"]
    assert torch.equal(net.layers[1].blobs[0], torch.from_numpy(w))   # CopyTrainedLayersFrom: the first
    assert torch.equal(second.blobs[0], before)


# ------------------------------------------------------------------ in-place rules
def test_in_place_only_as_top_i_equals_bottom_i():
    two = DATA + 'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "label" top: "label" }'
    with pytest.raises(CaffeError, match=r"layer 'e': top 'label' is already produced.*only in place, as top 0 = bottom 0"):
        Net(two.replace("dim: 1 dim: 5", "dim: 3 dim: 5"), "TEST")
    again = DATA + CONV % ("c1", "data", "c", "") + CONV % ("c2", "data", "c", "")
    with pytest.raises(CaffeError, match=r"layer 'c2': top 'c' is already produced"):
        Net(again, "TEST")
    chain = DATA + CONV % ("c1", "data", "c", "") + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n' \
        'layer { name: "d" type: "Dropout" bottom: "c" top: "c" }\n'
    assert [l.name for l in Net(chain, "TRAIN").layers] == ["data", "c1", "r", "d"]


def test_in_place_on_a_blob_another_layer_reads_is_refused_as_caffe_does():
    text = DATA + CONV % ("c1", "data", "c", "") + CONV % ("c2", "c", "x", "") + \
        'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n'
    with pytest.raises(CaffeError, match=r"layer 'r': cannot compute 'c' in place: layer 'c2' also reads it"):
        Net(text, "TEST")
    # reading the in-place result afterwards is fine
    ok = DATA + CONV % ("c1", "data", "c", "") + 'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }\n' + \
        CONV % ("c2", "c", "x", "") + CONV % ("c3", "c", "y", "")
    Net(ok, "TEST")


# ------------------------------------------------------------------ issue 15.1: in-place safety
A_PLUS_RELU = ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }\n'
               '%s\n'
               'layer { name: "relu" type: "ReLU" bottom: "d" top: "d" }\n'
               'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "d" top: "s" }\n')
ALIASING = {
    "dropout_test": 'layer { name: "alias" type: "Dropout" bottom: "a" top: "d" }',
    "interp_same_size": 'layer { name: "alias" type: "Interp" bottom: "a" top: "d" interp_param { height: 4 width: 4 } }',
    "crop_view": 'layer { name: "alias" type: "Crop" bottom: "a" bottom: "a" top: "d" crop_param { axis: 2 } }',
    "concat_one": 'layer { name: "alias" type: "Concat" bottom: "a" top: "d" }',
}


@pytest.mark.parametrize("case", sorted(ALIASING))
def test_in_place_relu_never_changes_a_blob_another_layer_reads(case):
    net = Net(A_PLUS_RELU % ALIASING[case], "TEST")
    a = torch.randn(2, 3, 4, 4)
    keep = a.clone()
    expected = a + torch.relu(a)
    with torch.no_grad():
        off = net({"a": a})["s"]
    on = net({"a": a.clone().requires_grad_()})["s"]
    assert torch.equal(a, keep)                       # the caller's tensor is untouched
    assert torch.allclose(off, expected) and torch.allclose(on.detach(), expected)


def test_in_place_relu_leaves_the_callers_tensor_alone_but_runs_in_place_on_its_own_blobs():
    text = ('layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
            'layer { name: "r" type: "ReLU" bottom: "a" top: "a" }\n'
            'layer { name: "c" type: "Convolution" bottom: "a" top: "c" convolution_param { num_output: 1 '
            'kernel_size: 1 bias_term: false weight_filler { type: "constant" value: 1 } } }\n'
            'layer { name: "r2" type: "ReLU" bottom: "c" top: "c" }\n')
    net = Net(text, "TEST")
    net.fuse = False    # (else r2 is the convolution's ReLU post-op: caffe/inference.py)
    a = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]])
    seen = []
    net.layer("r2").register_forward_pre_hook(lambda m, args: seen.append(m.in_place))
    with torch.no_grad():
        out = net({"a": a})
    assert torch.equal(a, torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]]]]))
    assert torch.equal(out["c"], torch.tensor([[[[0.0, 2.0], [3.0, 0.0]]]]))
    assert seen == [True]


# ------------------------------------------------------------------ schema fields
def pool_net(param, h=4, w=4):
    return Net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: %d dim: %d } } }\n'
               'layer { name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { %s } }' % (h, w, param), "TEST")


def test_pooling_round_mode_floor():
    ceil, floor = pool_net("pool: MAX kernel_size: 2 stride: 2", 5, 5), pool_net("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR", 5, 5)
    assert ceil.blob_shapes["y"] == (1, 1, 3, 3) and floor.blob_shapes["y"] == (1, 1, 2, 2)
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    with torch.no_grad():
        assert torch.equal(floor({"x": x})["y"][0, 0], torch.tensor([[6.0, 8.0], [16.0, 18.0]]))
        assert ceil({"x": x})["y"].shape == (1, 1, 3, 3)


def test_pooling_kernel_below_stride_without_pad_keeps_caffes_shape_and_values():
    """kernel 1 stride 2 on 4x4: Caffe declares and produces 3x3 (no pad, so no clip); the
    last row/column of windows starts past the image: -FLT_MAX for MAX, 0/0 for AVE."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    mx, ave = pool_net("pool: MAX kernel_size: 1 stride: 2"), pool_net("pool: AVE kernel_size: 1 stride: 2")
    assert mx.blob_shapes["y"] == ave.blob_shapes["y"] == (1, 1, 3, 3)
    with torch.no_grad():
        y, z = mx({"x": x})["y"][0, 0], ave({"x": x})["y"][0, 0]
    assert y.shape == z.shape == (3, 3)
    assert torch.equal(y[:2, :2], torch.tensor([[0.0, 2.0], [8.0, 10.0]])) and torch.equal(z[:2, :2], y[:2, :2])
    assert (y[2] == -torch.finfo(torch.float32).max).all() and torch.isnan(z[2]).all()


def test_pooling_pad_on_one_axis_clips_both_as_caffe_does():
    # kernel 2x1, stride 2, pad_h 1, pad_w 0 on 4x4: height ceil(4/2)+1 = 3 (kept: 4 < 4 + 1);
    # width ceil(3/2)+1 = 3, and Caffe clips whenever any pad is set: (3-1)*2 = 4 >= 4 + 0 -> 2
    net = pool_net("pool: MAX kernel_h: 2 kernel_w: 1 stride: 2 pad_h: 1 pad_w: 0")
    assert net.blob_shapes["y"] == (1, 1, 3, 2)
    assert pool_net("pool: MAX kernel_h: 2 kernel_w: 1 stride: 2").blob_shapes["y"] == (1, 1, 2, 3)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    with torch.no_grad():
        assert torch.equal(net({"x": x})["y"][0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0], [12.0, 14.0]]))


def test_pooling_mask_top_is_caffes_argmax_index():
    net = Net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }\n'
              'layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }',
              "TEST")
    x = torch.tensor([[[[1.0, 5.0, 2.0], [3.0, 4.0, 9.0], [8.0, 0.0, 7.0]]]])
    with torch.no_grad():
        out = net({"x": x})
    assert torch.equal(out["y"][0, 0], torch.tensor([[5.0, 9.0], [8.0, 7.0]]))
    assert torch.equal(out["m"][0, 0], torch.tensor([[1.0, 5.0], [6.0, 8.0]]))     # h * W + w
    with pytest.raises(CaffeError, match=r"unless pool is MAX"):
        Net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: AVE kernel_size: 2 } }',
            "TEST")


GRAD_NET = ('%s'
            'layer { name: "in" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } '
            'shape { dim: 2 dim: 1 dim: 5 dim: 5 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "score" %s '
            'convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }\n'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" %s }\n')


def _grads(text):
    net = Net(text, "TRAIN")
    x = inputs()
    data = x["data"].requires_grad_()
    loss = net.loss(net(x))
    if loss.requires_grad:
        loss.backward()
    return data.grad, net.layer("c").blobs[0].grad


def test_force_backward_and_propagate_down_decide_which_diffs_are_computed():
    # Caffe: nothing below the first learnable layer needs a diff unless force_backward
    data_grad, w_grad = _grads(GRAD_NET % ("", "", ""))
    assert data_grad is None and w_grad is not None
    data_grad, w_grad = _grads(GRAD_NET % ("force_backward: true\n", "", ""))
    assert data_grad is not None and data_grad.abs().sum() > 0
    # propagate_down: false on the loss's scores: no diff below the loss at all
    data_grad, w_grad = _grads(GRAD_NET % ("", "", "propagate_down: false propagate_down: false"))
    assert data_grad is None and w_grad is None
    # lr_mult 0: no parameter diff, unless force_backward
    assert _grads(GRAD_NET % ("", "param { lr_mult: 0 } param { lr_mult: 0 }", ""))[1] is None
    assert _grads(GRAD_NET % ("force_backward: true\n", "param { lr_mult: 0 } param { lr_mult: 0 }", ""))[1] is not None
    with pytest.raises(CaffeError, match=r"propagate_down must be given 0 times or once per bottom \(2\), got 1"):
        Net(GRAD_NET % ("", "", "propagate_down: false"), "TRAIN")


def test_net_records_caffes_backward_flags():
    net = Net(GRAD_NET % ("", "", ""), "TRAIN")
    assert net.layer_need_backward == [False, True, True]
    assert net.bottom_need_backward == [[], [False], [True, False]]
    forced = Net(GRAD_NET % ("force_backward: true\n", "", ""), "TRAIN")
    assert forced.bottom_need_backward == [[], [True], [True, False]]     # never into the labels


EMBED_NET = ('force_backward: true\n'
             'layer { name: "in" type: "Input" top: "i" input_param { shape { dim: 2 } } }\n'
             'layer { name: "e" type: "Embed" bottom: "i" top: "y" embed_param { num_output: 2 input_dim: 3 } }\n')


def test_backward_into_a_bottom_caffe_refuses_is_an_error_at_backward_time(tmp_path):
    """Caffe builds the net and runs forward; its Backward aborts (Embed's CHECK on its indices).
    pycaffe's backward says so in one line; a solver refuses before its first iteration."""
    import caffe
    from caffe.proto import caffe_pb2
    from caffe.solvers.solver import Solver
    net = Net(EMBED_NET, "TRAIN")
    assert net.backward_refusals == {1: "layer 'e' (Embed): cannot backpropagate to bottom 0 (the indices); "
                                        "BVLC Caffe aborts in Backward here (use propagate_down: false, or no "
                                        "force_backward)"}
    assert Net(EMBED_NET.replace("force_backward: true", ""), "TRAIN").backward_refusals == {}
    (tmp_path / "net.prototxt").write_text(EMBED_NET)
    py = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TRAIN)
    py.forward()
    with pytest.raises(CaffeError, match=r"layer 'e' \(Embed\): cannot backpropagate to bottom 0 \(the indices\)"):
        py.backward(y=np.ones((2, 2), np.float32))
    with pytest.raises(CaffeError, match="cannot backpropagate to bottom 0"):
        Solver(caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed"), net, lambda b: {"i": torch.zeros(2)})


def test_layer_phase_field_and_file_stages():
    text = ('state { stage: "deploy" }\n'
            'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1000 } } }\n'
            'layer { name: "d" type: "Dropout" bottom: "x" top: "y" phase: TRAIN }\n'
            'layer { name: "only" type: "ReLU" bottom: "y" top: "z" include { stage: "deploy" } }\n')
    net = Net(text, "TEST")
    assert net.layer("d").training and not net.layer("in").training
    assert "only" in net.layer_names                       # the file's state.stage counts
    net.eval()
    assert net.layer("d").training


def test_weights_inside_the_prototxt_are_used():
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 1 dim: 2 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 kernel_size: 1 } '
            'blobs { shape { dim: 1 dim: 1 dim: 1 dim: 1 } data: 3 } blobs { shape { dim: 1 } data: 0.5 } }')
    with torch.no_grad():
        y = Net(text, "TEST")({"x": torch.tensor([[[[1.0, 2.0]]]])})["y"]
    assert torch.equal(y, torch.tensor([[[[3.5, 6.5]]]]))
    with pytest.raises(CaffeError, match=r"3 param specs given, but the layer has only 2"):
        Net(text.replace('kernel_size: 1 }', 'kernel_size: 1 } param {} param {} param {}'), "TEST")


# ------------------------------------------------------------------ issue 15.3: label shrink
def label_net(crop, shrink="shrink_factor: 8", pads=""):
    return ('layer { name: "data" type: "ImageSegData" top: "data" top: "label" image_data_param { source: "x" '
            'batch_size: 1 } transform_param { %s } }\n'
            'layer { name: "label_shrink" type: "Interp" bottom: "label" top: "label_shrink" interp_param { %s %s } }\n'
            'layer { name: "s" type: "Silence" bottom: "data" bottom: "label_shrink" }\n'
            % (f"crop_size: {crop}" if crop else "", shrink, pads))


def test_label_shrink_must_be_an_exact_subsampling():
    assert Net(label_net(321), "TRAIN").blob_shapes["label_shrink"] == (1, 1, 41, 41)
    assert Net(label_net(306, pads="pad_beg: -1"), "TRAIN").blob_shapes["label_shrink"] == (1, 1, 39, 39)
    with pytest.raises(CaffeError, match=r"layer 'label_shrink' \(Interp\): resampling labels of height 320 to 40 is "
                                         r"not an exact subsampling.*crop size of 8k \+ 1, e\.g\. 313 or 321"):
        Net(label_net(320), "TRAIN")
    with pytest.raises(CaffeError, match=r"8k \+ 2, e\.g\. 298 or 306"):
        Net(label_net(300, pads="pad_beg: -1"), "TRAIN")
    # scores (not labels) may be resampled at any size
    Net(label_net(320).replace('bottom: "label" top', 'bottom: "data" top'), "TRAIN")
    # unknown size at build time: checked when the data arrives
    net = Net(label_net(None), "TRAIN")
    with torch.no_grad():
        assert net({"data": torch.zeros(1, 3, 17, 17), "label": torch.zeros(1, 1, 17, 17)}, outputs="all")[
            "label_shrink"].shape == (1, 1, 3, 3)
        with pytest.raises(CaffeError, match=r"height 20 to 3"):
            net({"data": torch.zeros(1, 3, 20, 20), "label": torch.zeros(1, 1, 20, 20)})


def test_label_shrink_keeps_label_values():
    net = Net(label_net(17), "TRAIN")
    lab = torch.randint(0, 21, (1, 1, 17, 17)).float()
    lab[lab > 15] = 255
    with torch.no_grad():
        out = net({"data": torch.zeros(1, 3, 17, 17), "label": lab}, outputs="all")["label_shrink"]
    assert torch.equal(out, lab[:, :, ::8, ::8])


# ------------------------------------------------------------------ issue 15.4
def test_concat_refuses_axis_and_concat_dim_together():
    text = DATA + 'layer { name: "cat" type: "Concat" bottom: "data" bottom: "label" top: "c" concat_param { %s } }'
    with pytest.raises(CaffeError, match=r"layer 'cat' \(Concat\): give either axis or concat_dim"):
        Net(text % "axis: 1 concat_dim: 1", "TEST")
    assert Net(text % "concat_dim: 1", "TEST").blob_shapes["c"] == (2, 4, 5, 5)


def test_eltwise_max_ties_send_the_gradient_to_the_first_maximum():
    text = ('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" input_param { shape { dim: 3 } } }\n'
            'layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "m" eltwise_param { operation: MAX } }\n'
            'layer { name: "l" type: "Silence" bottom: "m" }\nforce_backward: true\n')
    net = Net(text, "TRAIN")
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = torch.tensor([1.0, 5.0, 3.0], requires_grad=True)
    c = torch.tensor([0.0, 5.0, 3.0], requires_grad=True)
    m = net({"a": a, "b": b, "c": c}, outputs="all")["m"]
    m.backward(torch.ones(3))
    assert torch.equal(m.detach(), torch.tensor([1.0, 5.0, 3.0]))
    assert a.grad.tolist() == [1.0, 0.0, 1.0] and b.grad.tolist() == [0.0, 1.0, 0.0] and c.grad.tolist() == [0.0, 0.0, 0.0]
    assert not math.isnan(a.grad.sum().item())


def test_several_anonymous_tops_of_one_layer_are_kept_apart():
    net = Net('layer { name: "d" type: "ImageSegData" top: "data" image_data_param { source: "x" } '
              'transform_param { crop_size: 5 } }\nlayer { name: "s" type: "Silence" bottom: "data" }', "TRAIN")
    assert net.layer("d").top_names == ["data", "(automatic)", "(automatic)#2"]
    assert net.blob_names == ["data", "(automatic)", "(automatic)"]
