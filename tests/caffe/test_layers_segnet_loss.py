"""The SegNet forks' loss weighting (loss_param weight_by_label_freqs / class_weighting) and
Bayesian SegNet's test-time dropout (dropout_param sample_weights_test), against hand-computed
numbers, and Bayesian SegNet-Basic's train and inference nets built with both honoured."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from caffe import CaffeError
from caffe.layer import make_layer
from caffe.net import Net
from caffe.proto import caffe_pb2

FIXTURES = Path(__file__).parent.parent / "fixtures" / "segnet"
CAMVID_WEIGHTS = [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614]


def layer(text, *bottom_shapes, phase="TEST"):
    lp = text_format.Parse(text, caffe_pb2.LayerParameter())
    return make_layer(lp, bottom_shapes, phase)


def loss_layer(loss_param):
    return layer(f'name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" '
                 f'loss_param {{ {loss_param} }}',
                 (2, 2, 1, 2), (2, 1, 1, 2), phase="TRAIN")


# Scores for 2 items x 2 pixels, 2 classes. Pixel softmax: [ln 3, 0] -> p = (3/4, 1/4); [0, 0] -> (1/2, 1/2).
SCORES = torch.tensor([[[[math.log(3), 0.0]], [[0.0, 0.0]]],
                       [[[0.0, math.log(3)]], [[0.0, 0.0]]]])
# item 0: pixel 0 label 0 (p 3/4), pixel 1 label 1 (p 1/2); item 1: pixel 0 ignored, pixel 1 label 1 (p 1/4).
LABELS = torch.tensor([[[[0.0, 1.0]]], [[[255.0, 1.0]]]])
W0, W1 = 2.0, 3.0
WEIGHTED_SUM = W0 * -math.log(3 / 4) + W1 * -math.log(1 / 2) + W1 * -math.log(1 / 4)


# ---------------------------------------------------------------- weight_by_label_freqs
def test_weighted_loss_sums_weighted_nll_over_the_unweighted_valid_count():
    lay = loss_layer(f"weight_by_label_freqs: true ignore_label: 255 class_weighting: {W0} class_weighting: {W1}")
    assert lay.class_weights.tolist() == [W0, W1]
    (loss,) = lay(SCORES, LABELS)
    assert loss.item() == pytest.approx(WEIGHTED_SUM / 3, rel=1e-6)     # 3 non-ignored pixels, not 2 + 3 + 3


def test_weighted_loss_gradient_is_weight_times_p_minus_onehot_over_count():
    lay = loss_layer(f"weight_by_label_freqs: true ignore_label: 255 class_weighting: {W0} class_weighting: {W1}")
    s = SCORES.clone().requires_grad_(True)
    (loss,) = lay(s, LABELS)
    (2.0 * loss).backward()                      # loss_weight 2 scales the gradient as the fork's top diff does
    g = s.grad
    # item 0 pixel 0: label 0, p (3/4, 1/4): W0 (p - e0) = W0 (-1/4, 1/4); times 2 / 3
    assert g[0, :, 0, 0].tolist() == pytest.approx([W0 * -0.25 * 2 / 3, W0 * 0.25 * 2 / 3], rel=1e-6)
    # item 0 pixel 1: label 1, p (1/2, 1/2): W1 (1/2, -1/2) * 2 / 3
    assert g[0, :, 0, 1].tolist() == pytest.approx([W1 * 0.5 * 2 / 3, W1 * -0.5 * 2 / 3], rel=1e-6)
    assert g[1, :, 0, 0].tolist() == [0.0, 0.0]                         # the ignored pixel
    # item 1 pixel 1: label 1, p (3/4, 1/4): W1 (3/4, -3/4) * 2 / 3
    assert g[1, :, 0, 1].tolist() == pytest.approx([W1 * 0.75 * 2 / 3, W1 * -0.75 * 2 / 3], rel=1e-6)


@pytest.mark.parametrize("norm, divisor", [("normalize: false", 2), ("normalization: BATCH_SIZE", 2),
                                           ("normalization: FULL", 4), ("normalization: NONE", 1),
                                           ("normalize: true", 3)])
def test_weighted_loss_keeps_the_normalisation_modes(norm, divisor):
    lay = loss_layer(f"weight_by_label_freqs: true ignore_label: 255 class_weighting: {W0} class_weighting: {W1} "
                     f"{norm}")
    assert lay(SCORES, LABELS)[0].item() == pytest.approx(WEIGHTED_SUM / divisor, rel=1e-6)


def test_without_ignore_label_every_pixel_counts_and_is_weighted():
    lay = loss_layer(f"weight_by_label_freqs: true class_weighting: {W0} class_weighting: {W1}")
    labels = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]])         # item 1 pixel 0: label 0, p 1/2
    expected = (WEIGHTED_SUM + W0 * -math.log(1 / 2)) / 4
    assert lay(SCORES, labels)[0].item() == pytest.approx(expected, rel=1e-6)


def test_class_weighting_alone_is_ignored_as_in_the_fork():
    plain = loss_layer("ignore_label: 255")
    lay = loss_layer(f"ignore_label: 255 class_weighting: {W0} class_weighting: {W1}")
    assert lay.class_weights is None
    unweighted = (-math.log(3 / 4) - math.log(1 / 2) - math.log(1 / 4)) / 3
    assert lay(SCORES, LABELS)[0].item() == pytest.approx(unweighted, rel=1e-6)
    assert plain(SCORES, LABELS)[0].item() == pytest.approx(unweighted, rel=1e-6)


def test_class_weighting_count_must_match_the_classes():
    with pytest.raises(CaffeError, match=r"layer 'loss' \(SoftmaxWithLoss\): weight_by_label_freqs needs one "
                                         r"class_weighting value per class: got 1 for 2 classes"):
        loss_layer("weight_by_label_freqs: true class_weighting: 1")


def test_weight_by_label_freqs_field_numbers():
    fields = caffe_pb2.LossParameter.DESCRIPTOR.fields_by_name
    assert fields["normalization"].number == 3                  # BVLC's
    assert fields["weight_by_label_freqs"].number == 1003       # the forks' 3, moved clear of BVLC
    assert fields["class_weighting"].number == 4                # the forks'
    assert caffe_pb2.DropoutParameter.DESCRIPTOR.fields_by_name["sample_weights_test"].number == 2


# ---------------------------------------------------------------- sample_weights_test
def dropout(extra, phase):
    return layer(f'name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param {{ dropout_ratio: 0.25 {extra} }}',
                 (4, 10, 50, 50), phase=phase)


def test_dropout_samples_in_test_only_with_sample_weights_test():
    x = torch.ones(4, 10, 50, 50)
    assert torch.equal(dropout("", "TEST")(x)[0], x)                         # BVLC: identity in TEST
    torch.manual_seed(0)
    (y,) = dropout("sample_weights_test: true", "TEST")(x)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.75)]       # kept values scaled by 1/(1-ratio)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01                # 100000 draws
    (z,) = dropout("sample_weights_test: true", "TEST")(x)
    assert not torch.equal(y, z)                                             # a new mask per forward
    torch.manual_seed(0)
    (t,) = dropout("", "TRAIN")(x)
    assert torch.equal(t, y)                                                 # the same rule as TRAIN


def test_test_time_dropout_backward_uses_the_mask_and_scale():
    x = torch.full((4, 10, 50, 50), 3.0, requires_grad=True)
    (y,) = dropout("sample_weights_test: true", "TEST")(x)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach() / 3.0)          # mask * 1/(1-ratio), the forward's own mask


def test_scale_train_false_moves_the_scaling_to_test():
    """Intel's / NVIDIA's forks: kept values pass unscaled in TRAIN, TEST multiplies by 1 - ratio."""
    assert caffe_pb2.DropoutParameter.DESCRIPTOR.fields_by_name["scale_train"].number == 3
    x = torch.full((4, 10, 50, 50), 2.0, requires_grad=True)
    (y,) = dropout("scale_train: false", "TEST")(x)
    assert torch.allclose(y, torch.full_like(y, 1.5))                        # 2 * (1 - 0.25)
    (t,) = dropout("scale_train: false", "TRAIN")(x)
    assert sorted(torch.unique(t.detach()).tolist()) == [0.0, 2.0]
    t.backward(torch.ones_like(t))
    assert torch.equal(x.grad, (t.detach() != 0).float())                    # the mask, unscaled
    assert torch.equal(dropout("scale_train: true", "TEST")(x)[0], x)        # the default: BVLC's rule


# ---------------------------------------------------------------- SegNet-Tutorial's nets
def camvid_like(tmp_path, n):
    """n 24x32 BGR images (24 / 8 odd, as CamVid's 360 / 8: upsample4 needs pad_out_h) with labels
    0..10 (the net's Accuracy has no ignore_label, so CamVid's void 11 is left out)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / f"lab{i}.png"), rng.integers(0, 11, (24, 32), dtype=np.uint8))
        lines.append(f"im{i}.png lab{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")


def segnet(tmp_path, name, phase):
    text = (FIXTURES / name).read_text().replace("__LIST__", str(tmp_path / "list.txt"))
    path = tmp_path / name
    path.write_text(text.replace("__ROOT__", f"{tmp_path}/"))
    return Net(str(path), phase)


def test_bayesian_segnet_basic_train_net_weights_its_loss(tmp_path):
    camvid_like(tmp_path, 4)
    torch.manual_seed(0)
    net = segnet(tmp_path, "bayesian_segnet_basic_train.prototxt", "TRAIN")
    assert net.blob_shapes["data"] == (4, 3, 24, 32) and net.blob_shapes["upsample4"] == (4, 64, 3, 4)
    loss_layer_ = net.layer("loss")
    assert loss_layer_.class_weights.tolist() == pytest.approx(CAMVID_WEIGHTS) and loss_layer_.ignore == 11
    assert net.layer("encdrop3").training and not net.layer("encdrop3").sample_test
    rng = np.random.default_rng(1)
    data = torch.from_numpy(rng.normal(0, 50, (4, 3, 24, 32)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, 11, (4, 1, 24, 32)).astype(np.float32))
    blobs = net.forward({"data": data, "label": label}, outputs="all")
    scores = blobs["dense_softmax_inner_prod"].detach()
    lab = label.long().flatten()
    logp = torch.log_softmax(scores, 1).permute(0, 2, 3, 1).reshape(-1, 11)
    keep = lab != 11
    w = torch.tensor(CAMVID_WEIGHTS)
    expected = -(w[lab[keep]] * logp[keep].gather(1, lab[keep, None])[:, 0]).sum() / keep.sum()
    assert blobs["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    net.loss(blobs).backward()
    assert net.layer("conv1").blobs[0].grad.abs().sum() > 0


def test_bayesian_segnet_basic_inference_net_samples_dropout_in_test(tmp_path):
    camvid_like(tmp_path, 2)
    net = segnet(tmp_path, "bayesian_segnet_basic_inference.prototxt", "TEST")
    drops = [lay for lay in net.layers if lay.type == "Dropout"]
    assert [d.name for d in drops] == ["encdrop3", "encdrop4", "decdrop4", "decdrop3"]
    assert all(d.sample_test and not d.training for d in drops)
    assert net.blob_shapes["prob"] == (8, 11, 24, 32)
    x = torch.from_numpy(np.random.default_rng(2).normal(0, 50, (1, 3, 24, 32)).astype(np.float32)).repeat(8, 1, 1, 1)
    with torch.no_grad():
        torch.manual_seed(0)
        prob = net.forward({"data": x, "label": torch.zeros(8, 1, 24, 32)})["prob"]
    # the 8 copies of one image are 8 Monte Carlo samples: they differ, each a distribution
    assert torch.allclose(prob.sum(1), torch.ones(8, 24, 32), atol=1e-5)
    assert (prob[0] - prob[1]).abs().max() > 1e-3
