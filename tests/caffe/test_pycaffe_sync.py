"""pycaffe on a device (issue 25 items 11-12, issue 24 item 13), tested on the CPU.

The fake GPU mode: ``set_mode_gpu()`` puts nets on ``cpu:0``, which caffe.syncedmem treats as
a device (its tensors are CPU memory kept apart from the host arrays), so every host<->device
copy is made and counted (through syncedmem.h2d / d2h) and the values can be compared with
CPU mode. BVLC's pycaffe tests of this repository run once more in that mode at the end.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import caffe
import caffe._caffe.solver as pysolver
import caffe.pycaffe as pycaffe
from caffe import syncedmem

FAKE_GPU = torch.device("cpu", 0)


@pytest.fixture
def fake_gpu(monkeypatch):
    """set_mode_gpu() works and puts nets on the stand-in device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def device():
        return FAKE_GPU if pycaffe._MODE["gpu"] else torch.device("cpu")
    monkeypatch.setattr(pycaffe, "device", device)
    monkeypatch.setattr(pysolver, "device", device)
    yield
    caffe.set_mode_cpu()


@pytest.fixture
def copies(monkeypatch):
    """Counts of host->device and device->host copies."""
    count = {"h2d": 0, "d2h": 0}
    h2d, d2h = syncedmem.h2d, syncedmem.d2h

    def counted_h2d(*a):
        count["h2d"] += 1
        return h2d(*a)

    def counted_d2h(*a):
        count["d2h"] += 1
        return d2h(*a)
    monkeypatch.setattr(syncedmem, "h2d", counted_h2d)
    monkeypatch.setattr(syncedmem, "d2h", counted_d2h)
    return count


# data -> ip1 -> relu -> ip2 -> ip3 -> loss (SoftmaxWithLoss against label); five learnable layers
# would be ten parameter copies and ten gradient copies each way per pass if synchronised eagerly.
NET = """name: 'chain' force_backward: true
layer { name: 'data' type: 'Input' top: 'data' top: 'label'
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
layer { name: 'ip1' type: 'InnerProduct' bottom: 'data' top: 'ip1'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'constant' value: 0.1 } } }
layer { name: 'relu' type: 'ReLU' bottom: 'ip1' top: 'ip1' }
layer { name: 'ip2' type: 'InnerProduct' bottom: 'ip1' top: 'ip2'
  inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'constant' value: -0.1 } } }
layer { name: 'ip3' type: 'InnerProduct' bottom: 'ip2' top: 'ip3'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.5 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip3' bottom: 'label' top: 'loss' }
"""

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
LABEL = np.array([0, 2, 1, 2], np.float32)


def make_net(tmp_path, text=NET, phase=caffe.TRAIN):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    caffe.set_random_seed(7)
    return caffe.Net(str(path), phase)


def run(net, x=X):
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = LABEL
    net.forward()
    net.backward()
    return ({name: b.data.copy() for name, b in net.blobs.items()},
            {name: b.diff.copy() for name, b in net.blobs.items()},
            {f"{name}/{i}": b.diff.copy() for name, vec in net.params.items() for i, b in enumerate(vec)})


def assert_same(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-6, atol=1e-7, err_msg=k)


# ------------------------------------------------------------------ item 12: copies only on access
def test_gpu_mode_computes_what_cpu_mode_does(tmp_path, fake_gpu):
    reference = run(make_net(tmp_path))
    caffe.set_mode_gpu()
    net = make_net(tmp_path)
    assert_same(run(net), reference)
    data, diffs, params = run(net)                    # param diffs accumulate, as on the CPU
    assert_same((data, diffs, {k: v / 2 for k, v in params.items()}), reference)


def test_a_pass_copies_what_the_host_wrote_and_reads_not_the_parameters(tmp_path, fake_gpu, copies):
    caffe.set_mode_gpu()
    net = make_net(tmp_path)
    data, label = net.blobs["data"], net.blobs["label"]
    data.data[...] = X
    label.data[...] = LABEL
    net.forward()
    net.backward()
    for _ in range(3):
        copies.update(h2d=0, d2h=0)
        data.data[...] = X          # the device read the input: nothing to copy back first
        label.data[...] = LABEL
        out = net.forward()         # data and label go to the device; 'loss' comes back (the return)
        assert copies == {"h2d": 2, "d2h": 1}
        net.backward()              # the loss diff never left the device; returns data's diff (and
        assert copies == {"h2d": 2, "d2h": 2}   # label's, which nothing wrote: zeros, no copy)
        assert out["loss"].shape == ()
    copies.update(h2d=0, d2h=0)
    w = net.params["ip2"][0].data   # on access only: one copy back ...
    assert copies == {"h2d": 0, "d2h": 1}
    w[...] = 0
    net.forward()                   # ... and, written, one copy out before the next pass
    assert copies == {"h2d": 1, "d2h": 2}
    assert np.all(net.blobs["ip2"].data == np.float32(-0.1))


def test_the_loss_stays_on_the_device_during_a_pass(tmp_path, fake_gpu, copies):
    caffe.set_mode_gpu()
    net = make_net(tmp_path)
    net.blobs["data"].data[...] = X
    net.blobs["label"].data[...] = LABEL
    copies.update(h2d=0, d2h=0)
    loss = net._forward(0, len(net.layers) - 1)
    assert copies == {"h2d": 2, "d2h": 0} and torch.is_tensor(loss)
    assert float(loss) == pytest.approx(float(net.blobs["loss"].data))


# ------------------------------------------------------------------ item 11: the host-mirror contract
def test_arrays_taken_in_cpu_mode_stay_the_blobs_memory_after_set_mode_gpu(tmp_path, fake_gpu):
    net = make_net(tmp_path)
    w, d = net.params["ip1"][0].data, net.blobs["data"].data    # views taken in CPU mode
    caffe.set_mode_gpu()
    w[...] = 0.25                   # written through the old views, before any GPU pass:
    d[...] = X                      # both reach the device
    net.blobs["label"].data[...] = LABEL
    net.forward()
    relu = np.maximum(X @ np.full((3, 5), 0.25, np.float32) + 0.1, 0)
    np.testing.assert_allclose(net.blobs["ip1"].data, relu, rtol=1e-6)
    assert net.blobs["data"].data is d                          # one host array per blob
    assert np.shares_memory(net.params["ip1"][0].data, w)       # the parameter's CPU memory is its mirror
    net.params["ip1"][0].data[...] = 0.5                        # a write through .data reaches the device
    net.forward()
    np.testing.assert_allclose(net.blobs["ip1"].data, np.maximum(X @ np.full((3, 5), 0.5, np.float32) + 0.1, 0),
                               rtol=1e-6)


def test_a_view_kept_across_a_gpu_pass_refuses_writes_until_accessed_again(tmp_path, fake_gpu):
    caffe.set_mode_gpu()
    net = make_net(tmp_path)
    d, w = net.blobs["data"].data, net.params["ip1"][0].data
    d[...] = X
    net.blobs["label"].data[...] = LABEL
    net.forward()
    net.backward()
    # The pass used them: BVLC would ignore these writes silently; here numpy refuses them.
    with pytest.raises(ValueError, match="read-only"):
        d[...] = 0
    with pytest.raises(ValueError, match="read-only"):
        w[...] = 0
    assert net.blobs["data"].data is d and d.flags.writeable      # access: refreshed, writable
    assert net.params["ip1"][0].data is w and w.flags.writeable
    ip1 = net.blobs["ip1"].data
    net.forward()
    assert not ip1.flags.writeable                                 # the pass wrote ip1 on the device
    np.testing.assert_array_equal(net.blobs["ip1"].data, ip1)      # access brings it back, same array


def test_back_to_cpu_mode_the_mirrors_are_the_memory_again(tmp_path, fake_gpu):
    caffe.set_mode_gpu()
    net = make_net(tmp_path)
    w = net.params["ip1"][0].data
    run(net)
    dw = net.params["ip1"][0].diff.copy()
    caffe.set_mode_cpu()
    run_cpu = run(net)
    assert np.shares_memory(net.params["ip1"][0].data, w)
    np.testing.assert_allclose(run_cpu[2]["ip1/0"], 2 * dw, rtol=1e-6)  # accumulated over both passes
    w[...] = 0                                                         # the CPU memory itself
    net.forward()
    assert np.all(net.blobs["ip1"].data == np.float32(0.1))


SOLVER_NET = NET.replace("force_backward: true", "")


def solver(tmp_path, base_lr=0.1):
    (tmp_path / "net.prototxt").write_text(SOLVER_NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(f"net: '{tmp_path / 'net.prototxt'}'\nbase_lr: {base_lr} lr_policy: 'fixed' momentum: 0.9\n"
                    f"max_iter: 10 display: 0 snapshot_prefix: '{tmp_path / 'snap'}' random_seed: 5\n")
    s = caffe.SGDSolver(str(path))
    s.net.blobs["data"].data[...] = X
    s.net.blobs["label"].data[...] = LABEL
    return s


def train_with_callbacks(tmp_path):
    tmp_path.mkdir()
    s = solver(tmp_path)
    initial = s.net.params["ip1"][0].data.copy()
    seen = []

    def on_start():
        # BVLC's pattern: a callback edits the weights and feeds the next batch
        s.net.params["ip3"][1].data[...] = 0.01 * s.iter
        s.net.blobs["data"].data[...] = X * (1 + s.iter)

    def on_gradients_ready():
        seen.append(s.net.params["ip3"][0].diff.copy())
        s.net.params["ip1"][0].diff[...] = 0     # ip1 is frozen by zeroing its diff

    s.add_callback(on_start, on_gradients_ready)
    s.step(3)
    return s, seen, initial


def test_solver_callbacks_writes_reach_the_device(tmp_path, fake_gpu):
    cpu, cpu_seen, cpu_initial = train_with_callbacks(tmp_path / "cpu")
    caffe.set_mode_gpu()
    gpu, gpu_seen, gpu_initial = train_with_callbacks(tmp_path / "gpu")
    np.testing.assert_array_equal(gpu_initial, cpu_initial)
    assert len(gpu_seen) == 3
    for a, b in zip(cpu_seen, gpu_seen):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    for name in ("ip1", "ip2", "ip3"):
        for a, b in zip(cpu.net.params[name], gpu.net.params[name]):
            np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_array_equal(gpu.net.params["ip1"][0].data, gpu_initial)   # its zeroed diff reached the update
    assert not np.allclose(gpu.net.params["ip2"][0].data, make_net(tmp_path).params["ip2"][0].data)


def test_a_solver_step_copies_no_parameter(tmp_path, fake_gpu, copies):
    caffe.set_mode_gpu()
    s = solver(tmp_path)
    s.step(1)
    copies.update(h2d=0, d2h=0)
    s.step(5)
    assert copies == {"h2d": 0, "d2h": 0}   # the input never changed; weights and diffs stayed on the device
    s.net.blobs["data"].data[...] = 2 * X
    s.step(1)
    assert copies == {"h2d": 1, "d2h": 0}


# ------------------------------------------------------------------ issue 24 item 13: diffs on first use
def test_a_test_net_allocates_no_diff(tmp_path):
    net = make_net(tmp_path, NET.replace("force_backward: true", ""), caffe.TEST)
    net.blobs["data"].data[...] = X
    net.blobs["label"].data[...] = LABEL
    net.forward()
    assert not any(b.diff_allocated for b in net.blobs.values())
    assert all(b._data.allocated for b in net.blobs.values())
    assert np.all(net.blobs["ip2"].diff == 0) and net.blobs["ip2"].diff_allocated   # zeros on first access
    assert net.blobs["loss"].diff == 1.0                                             # a loss top's: its weight


def test_diffs_are_allocated_by_backward_with_the_right_values(tmp_path):
    # loss = sum((2 x - t)^2) / (2 N): d x = 2 (2 x - t) / N, d t is not propagated (no force_backward)
    text = """layer { name: 'in' type: 'Input' top: 'x' top: 't' input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: 'double' type: 'Power' bottom: 'x' top: 'y' power_param { scale: 2 } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'y' bottom: 't' top: 'loss' }"""
    net = make_net(tmp_path, "force_backward: true\n" + text)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = np.ones((2, 3), np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["t"].data[...] = t
    net.forward()
    assert not any(net.blobs[b].diff_allocated for b in ("x", "y", "t"))
    net.backward()
    assert net.blobs["x"].diff_allocated and net.blobs["y"].diff_allocated
    np.testing.assert_allclose(net.blobs["y"].diff, (2 * x - t) / 2)
    np.testing.assert_allclose(net.blobs["x"].diff, 2 * (2 * x - t) / 2)
    np.testing.assert_allclose(net.blobs["t"].diff, -(2 * x - t) / 2)   # EuclideanLoss: both bottoms


# ------------------------------------------------------------------ BVLC's pycaffe tests in the fake GPU mode
@pytest.fixture
def gpu_mode(fake_gpu):
    caffe.set_mode_gpu()


def _rerun(module):
    """The tests of ``module`` (and the fixtures they use) as new functions of this module that
    run in the fake GPU mode."""
    import functools
    import importlib
    mod = importlib.import_module(module)
    found = {}
    for name in dir(mod):
        obj = getattr(mod, name)
        if name.startswith("test_") and callable(obj) and name != "test_mode_and_type_list":
            found[f"{name}__in_gpu_mode"] = pytest.mark.usefixtures("gpu_mode")(functools.wraps(obj)(
                lambda *a, _f=obj, **k: _f(*a, **k)))
        elif type(obj).__name__ == "FixtureFunctionDefinition" and name not in globals():
            found[name] = obj
    return found


for _module in ("test_pycaffe_net", "test_pycaffe_solver", "test_python_layer"):
    globals().update(_rerun(_module))
