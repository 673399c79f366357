"""pycaffe's SGDSolver: the engine's loop over pycaffe nets that user code feeds."""
from __future__ import annotations

import os

import numpy as np
import pytest

import caffe
from caffe import CaffeError

# score = conv(data) 1 -> 2 channels, zero-initialised; SoftmaxWithLoss against label.
NET = """name: 'tiny'
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
  input_param { shape { dim: 1 dim: 1 dim: 1 dim: 1 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }
layer { name: 'score' type: 'Convolution' bottom: 'data' top: 'score'
  convolution_param { num_output: 2 kernel_size: 1
    weight_filler { type: 'constant' value: 0 } bias_filler { type: 'constant' value: 0 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'score' bottom: 'label' top: 'loss' }
"""

# A Python data layer: top 'data' = its call count, top 'label' = 0.
COUNTER = '''
import caffe
class Counter(caffe.Layer):
    calls = 0
    def setup(self, bottom, top):
        pass
    def reshape(self, bottom, top):
        top[0].reshape(1, 1, 1, 1)
        top[1].reshape(1, 1, 1, 1)
    def forward(self, bottom, top):
        Counter.calls += 1
        top[0].data[...] = Counter.calls
        top[1].data[...] = 0
'''


def solver_file(tmp_path, net=NET, extra=""):
    (tmp_path / "net.prototxt").write_text(net)
    path = tmp_path / "solver.prototxt"
    path.write_text(f"net: '{tmp_path / 'net.prototxt'}'\nbase_lr: 0.1 lr_policy: 'fixed' momentum: 0\n"
                    f"max_iter: 3 display: 0 snapshot_prefix: '{tmp_path / 'snap'}'\n{extra}")
    return str(path)


def test_step_updates_weights_from_user_filled_blobs(tmp_path):
    solver = caffe.SGDSolver(solver_file(tmp_path))
    net = solver.net
    net.blobs["data"].data[...] = 1
    net.blobs["label"].data[...] = 0
    solver.step(1)
    # scores 0, 0 -> p = .5, .5; d score = p - onehot(0) = [-.5, .5]; w -= 0.1 * d * x(=1)
    assert solver.iter == 1
    np.testing.assert_allclose(net.params["score"][0].data.ravel(), [0.05, -0.05], atol=1e-7)
    np.testing.assert_allclose(net.params["score"][1].data, [0.05, -0.05], atol=1e-7)
    net.blobs["data"].data[...] = 2  # the next step reads the new data
    before = net.params["score"][0].data.copy()
    solver.step(1)
    p = np.exp([0.15, -0.15]) / np.exp([0.15, -0.15]).sum()  # scores = 2 w + b = [.15, -.15]
    np.testing.assert_allclose(net.params["score"][0].data.ravel(), before.ravel() - 0.1 * 2 * (p - [1, 0]),
                               atol=1e-6)


def test_apply_update_uses_the_user_diff(tmp_path):
    solver = caffe.get_solver(solver_file(tmp_path))
    assert isinstance(solver, caffe.SGDSolver)
    w = solver.net.layers[1].blobs[0]
    w.data[...] = 0
    w.diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(w.data, -0.1)
    assert solver.iter == 0


def test_python_data_layer_drives_training_and_test_nets_share_weights(tmp_path, monkeypatch):
    (tmp_path / "counter_layer.py").write_text(COUNTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = NET.replace("""layer { name: 'data' type: 'Input' top: 'data' top: 'label'
  input_param { shape { dim: 1 dim: 1 dim: 1 dim: 1 } shape { dim: 1 dim: 1 dim: 1 dim: 1 } } }""",
                      "layer { name: 'data' type: 'Python' top: 'data' top: 'label' "
                      "python_param { module: 'counter_layer' layer: 'Counter' } }")
    solver = caffe.SGDSolver(solver_file(tmp_path, net, "test_iter: 2 test_interval: 100 test_initialization: false"))
    import counter_layer
    start = counter_layer.Counter.calls
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("ready"))
    solver.step(2)
    assert counter_layer.Counter.calls - start == 2
    assert solver.net.blobs["data"].data.item() == counter_layer.Counter.calls
    assert calls == ["start", "ready", "start", "ready"]
    test_net = solver.test_nets[0]
    np.testing.assert_array_equal(test_net.params["score"][0].data, solver.net.params["score"][0].data)
    assert solver.net.params["score"][0].data.any()


def test_snapshot_restore_and_solve(tmp_path):
    path = solver_file(tmp_path)
    solver = caffe.SGDSolver(path)
    solver.net.blobs["data"].data[...] = 1
    solver.step(2)
    solver.snapshot()
    state = str(tmp_path / "snap_iter_2.solverstate")
    assert os.path.isfile(state) and os.path.isfile(tmp_path / "snap_iter_2.caffemodel")
    other = caffe.SGDSolver(path)
    other.restore(state)
    assert other.iter == 2
    np.testing.assert_array_equal(other.net.params["score"][0].data, solver.net.params["score"][0].data)
    other.net.blobs["data"].data[...] = 1
    other.solve()
    assert other.iter == 3


def test_unknown_solver_type_is_refused(tmp_path):
    path = solver_file(tmp_path, extra="type: 'Adamax'")
    with pytest.raises(CaffeError, match="Adamax"):
        caffe.get_solver(path)


# One step of every Caffe solver type from the tiny net above (score weights 0, data 1, label 0):
# the gradient of both the weight and the bias is g = [-0.5, 0.5]; base_lr 0.1.
def _one_step(g, kind, extra):
    lr, m = 0.1, extra.get("momentum", 0.0)
    delta = extra.get("delta", 1e-8)
    if kind == "SGD":
        return -lr * g
    if kind == "Nesterov":   # v = lr g; update = (1 + m) v - m 0
        return -(1 + m) * lr * g
    if kind == "AdaGrad":    # h = g^2; update = lr g / (|g| + delta)
        return -lr * g / (np.abs(g) + delta)
    if kind == "RMSProp":    # h = (1 - d) g^2
        d = extra["rms_decay"]
        return -lr * g / (np.sqrt((1 - d) * g * g) + delta)
    if kind == "AdaDelta":   # h = (1-m) g^2; u = g sqrt(delta / (h + delta))
        return -lr * g * np.sqrt(delta / ((1 - m) * g * g + delta))
    b1, b2 = m, extra.get("momentum2", 0.999)   # Adam, t = 1: correction sqrt(1-b2)/(1-b1)
    mm, vv = (1 - b1) * g, (1 - b2) * g * g
    return -lr * np.sqrt(1 - b2) / (1 - b1) * mm / (np.sqrt(vv) + delta)


@pytest.mark.parametrize("kind, extra", [
    ("SGD", {}), ("Nesterov", {"momentum": 0.9}), ("AdaGrad", {"delta": 1e-3}),
    ("RMSProp", {"rms_decay": 0.9, "delta": 1e-3}), ("AdaDelta", {"momentum": 0.95, "delta": 1e-2}),
    ("Adam", {"momentum": 0.9, "momentum2": 0.999}),
])
def test_every_solver_type_takes_caffes_first_step(tmp_path, kind, extra):
    fields = "".join(f"{k}: {v} " for k, v in extra.items() if k != "momentum")
    path = solver_file(tmp_path, extra=f"type: '{kind}' {fields}")
    with open(path) as f:
        text = f.read().replace("momentum: 0", f"momentum: {extra.get('momentum', 0)}")
    with open(path, "w") as f:
        f.write(text)
    solver = caffe.get_solver(path)
    assert type(solver).__name__ == ("SGDSolver" if kind == "SGD" else f"{kind}Solver")
    solver.net.blobs["data"].data[...] = 1
    solver.net.blobs["label"].data[...] = 0
    solver.step(1)
    want = _one_step(np.array([-0.5, 0.5]), kind, extra)
    np.testing.assert_allclose(solver.net.params["score"][0].data.ravel(), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(solver.net.params["score"][1].data, want, rtol=1e-5, atol=1e-7)
    # Caffe's diff after ApplyUpdate is the value applied: w_new = w_old - diff (w_old = 0).
    np.testing.assert_allclose(solver.net.params["score"][0].diff.ravel(), -want, rtol=1e-5, atol=1e-7)
    solver.snapshot()   # history in Caffe's layout: a second set for AdaDelta and Adam
    from caffe.model_io import load_solverstate
    state = load_solverstate(str(tmp_path / "snap_iter_1.solverstate"))
    assert len(state.history) == (4 if kind in ("AdaDelta", "Adam") else 2)


def test_diff_after_step_is_the_applied_update_with_momentum_and_decay(tmp_path):
    """Scripts that monitor update/weight ratios read net.params[..][i].diff after step()."""
    path = solver_file(tmp_path, extra="weight_decay: 0.5")
    with open(path) as f:
        text = f.read().replace("momentum: 0", "momentum: 0.9")
    with open(path, "w") as f:
        f.write(text)
    solver = caffe.SGDSolver(path)
    net = solver.net
    net.blobs["data"].data[...] = 1
    net.blobs["label"].data[...] = 0
    w = net.params["score"][0]
    w.data[...] = np.array([0.2, -0.4]).reshape(w.data.shape)
    history = np.zeros(2)
    for _ in range(2):
        before = w.data.ravel().copy()
        scores = before + net.params["score"][1].data
        p = np.exp(scores) / np.exp(scores).sum()
        g = (p - [1, 0]) + 0.5 * before               # regularised gradient (L2, decay 0.5)
        history = 0.9 * history + 0.1 * g
        solver.step(1)
        np.testing.assert_allclose(w.diff.ravel(), history, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w.data.ravel(), before - w.diff.ravel(), rtol=1e-6, atol=1e-7)


def test_adagrad_and_rmsprop_refuse_momentum(tmp_path):
    for kind in ("AdaGrad", "RMSProp"):
        path = solver_file(tmp_path, extra=f"type: '{kind}'")
        with open(path) as f:
            text = f.read().replace("momentum: 0", "momentum: 0.9")
        with open(path, "w") as f:
            f.write(text)
        with pytest.raises(CaffeError, match=f"momentum cannot be used with {kind}"):
            caffe.get_solver(path)
