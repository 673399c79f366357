"""The engine against BVLC Caffe's own forward values and gradients (tests/fixtures/golden/layers)."""
import numpy as np
import pytest
import torch

from conftest import FIXTURES
from caffe.net import Net

GOLDEN = FIXTURES / "golden" / "layers"


def _grad(t, shape):
    """A tensor's gradient; None (no path to the loss, e.g. only into Silence) is Caffe's zero diff."""
    return np.zeros(shape, np.float32) if t.grad is None else t.grad.numpy()


@pytest.fixture(scope="module")
def golden_run():
    ref = np.load(GOLDEN / "forward_backward.npz")
    net = Net(str(GOLDEN / "net.prototxt"), phase="TEST")
    report = net.copy_from(str(GOLDEN / "net.caffemodel"))
    assert sorted(report["copied"]) == sorted(l.name for l in net.layers if len(l.blobs))
    data = torch.tensor(ref["data"], requires_grad=True)
    blobs = net({"data": data, "label": torch.tensor(ref["label"])}, outputs="all")
    for name in ("conv_a", "relu_leaky"):
        blobs[name].retain_grad()
    net.loss(blobs).backward()
    return net, ref, data, blobs


def test_forward_matches_caffe_for_every_blob(golden_run):
    net, ref, _, blobs = golden_run
    names = [k for k in ref.files if not k.startswith(("grad_", "paramdiff_")) and "_split_" not in k]
    assert len(names) > 25
    for name in names:
        ours = blobs[name].detach().numpy()
        assert ours.shape == ref[name].shape, name
        np.testing.assert_allclose(ours, ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_blob_and_parameter_gradients_match_caffe(golden_run):
    net, ref, data, blobs = golden_run
    np.testing.assert_allclose(_grad(data, ref["grad_data"].shape), ref["grad_data"], rtol=1e-4, atol=1e-6)
    for name in ("conv_a", "relu_leaky"):
        np.testing.assert_allclose(_grad(blobs[name], ref[f"grad_{name}"].shape), ref[f"grad_{name}"],
                                   rtol=1e-4, atol=1e-6, err_msg=name)
    checked = 0
    for key in ref.files:
        if key.startswith("paramdiff_"):
            layer, idx = key[len("paramdiff_"):].rsplit("_", 1)
            grad = _grad(net.layer(layer).blobs[int(idx)], ref[key].shape)
            np.testing.assert_allclose(grad, ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
            checked += 1
    assert checked == 13


def test_loss_normalisation_modes_against_hand_computation(golden_run):
    """VALID divides by the non-ignored count, BATCH_SIZE by N, FULL by N*H*W."""
    _, ref, _, blobs = golden_run
    score = torch.tensor(ref["score"]).double()
    label = torch.tensor(ref["label"]).long()[:, 0]
    logp = torch.log_softmax(score, 1)
    valid = label != 255
    nll = -logp.gather(1, torch.where(valid, label, 0).unsqueeze(1))[:, 0][valid].sum().item()
    assert 0 < valid.sum() < valid.numel()
    assert blobs["loss_valid"].item() == pytest.approx(nll / valid.sum().item(), rel=1e-5)
    assert blobs["loss_batch"].item() == pytest.approx(nll / 2, rel=1e-5)
    assert blobs["loss_full"].item() == pytest.approx(nll / valid.numel(), rel=1e-5)
