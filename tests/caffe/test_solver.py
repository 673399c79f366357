"""Caffe's SGD: golden trajectories of BVLC Caffe, hand-computed updates and learning rates,
iter_size, clipping, snapshots and resume (caffe/solvers/solver.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FIXTURES
from caffe import CaffeError
from caffe.model_io import load_caffemodel, load_solverstate
from caffe.net import LearnableParam, Net
from caffe.proto import caffe_pb2 as pb
from caffe.prototxt import parse_solver
from caffe.solvers.update import SGD, learning_rate, lr_at
from caffe.solvers.solver import Solver

GOLDEN = FIXTURES / "golden"
SOLVERS = ["solver_step", "solver_poly", "solver_multistep"]


def golden_solver(name, param=None, log=None, batch=None):
    """A Solver on Caffe's golden net from its init weights, fed the golden batches."""
    d = GOLDEN / name
    z = np.load(d / "trajectory.npz")
    param = param or parse_solver(d / "solver.prototxt")
    param.snapshot = 0  # tests snapshot explicitly, into tmp_path
    net = Net(d / "train.prototxt", phase="TRAIN")
    net.copy_from(d / "init.caffemodel")
    batch = batch or (lambda b: {"data": torch.from_numpy(z[f"data_{b // param.iter_size}"]),
                                 "label": torch.from_numpy(z[f"label_{b // param.iter_size}"])})
    return Solver(param, net, batch, log=log, progress=False), z


def blobs(net):
    return {(layer.name, i): b.detach().numpy().copy() for layer in net.layers for i, b in enumerate(layer.blobs)}


def assert_close(ours, ref, what):
    """Equal to float32 round-off relative to the blob's scale."""
    ref = np.asarray(ref).reshape(np.shape(ours))
    tol = 1e-5 * max(float(np.abs(ref).max()), 1e-3)
    err = float(np.abs(ours - ref).max())
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("name", SOLVERS)
def test_golden_trajectory(name):
    """Every iteration's weights and loss equal BVLC Caffe's (momentum, decay, lr_mult incl.
    a frozen layer, iter_size 2, clip_gradients, step / poly / multistep)."""
    solver, z = golden_solver(name)
    frozen = blobs(solver.net)[("frozen", 0)]
    for t in range(7):
        solver.step(1)
        assert math.isclose(solver.smoothed(), float(z["losses"][t]), rel_tol=1e-5), f"loss of iteration {t}"
        for (layer, i), w in blobs(solver.net).items():
            assert_close(w, z[f"{layer}_{i}_after_iter{t + 1}"], f"{layer} blob {i} after iteration {t + 1}")
    assert np.array_equal(blobs(solver.net)[("frozen", 0)], frozen)  # lr_mult 0: untouched
    # Caffe's own snapshot after the last iteration: weights and momentum history.
    ref = {layer.name: layer.blobs for layer in load_caffemodel(GOLDEN / name / "snap_iter_7.caffemodel")}
    for (layer, i), w in blobs(solver.net).items():
        assert_close(w, ref[layer][i], f"{layer} blob {i} vs snap_iter_7.caffemodel")
    state = load_solverstate(GOLDEN / name / "snap_iter_7.solverstate")
    assert (solver.iter, solver.current_step) == (state.iter, state.current_step)
    for i, (h, ref_h) in enumerate(zip(solver.sgd.history, state.history)):
        assert_close(h.numpy(), ref_h, f"history {i}")


@pytest.mark.parametrize("name", SOLVERS)
def test_snapshot_written_and_restored(name, tmp_path):
    """Our snapshot after 7 iterations holds what Caffe's does; restoring Caffe's own
    solverstate gives its weights, history, iteration and current_step."""
    solver, _ = golden_solver(name)
    solver.step(7)
    solver.param.snapshot_prefix = str(tmp_path / "snap")
    solver.snapshot()
    ours = load_solverstate(tmp_path / "snap_iter_7.solverstate")
    theirs = load_solverstate(GOLDEN / name / "snap_iter_7.solverstate")
    assert (ours.iter, ours.current_step) == (theirs.iter, theirs.current_step)
    assert ours.learned_net == str(tmp_path / "snap_iter_7.caffemodel")
    pb.SolverState.FromString((tmp_path / "snap_iter_7.solverstate").read_bytes())  # valid protobuf
    for a, b in zip(ours.history, theirs.history):
        assert_close(a, b, "history")
    ref = {layer.name: layer.blobs for layer in load_caffemodel(GOLDEN / name / "snap_iter_7.caffemodel")}
    for layer in load_caffemodel(tmp_path / "snap_iter_7.caffemodel"):
        for a, b in zip(layer.blobs, ref[layer.name]):
            assert_close(a, b, layer.name)

    fresh, _ = golden_solver(name)
    fresh.restore(str(GOLDEN / name / "snap_iter_7.solverstate"))  # learned_net found beside it
    assert (fresh.iter, fresh.current_step) == (7, theirs.current_step)
    for (layer, i), w in blobs(fresh.net).items():
        assert np.array_equal(w, ref[layer][i].reshape(w.shape))
    for h, ref_h in zip(fresh.sgd.history, theirs.history):
        assert np.array_equal(h.numpy(), ref_h.reshape(h.shape))


def test_resume_continues_exactly(tmp_path):
    """4 iterations, snapshot, a new solver restores and runs 3 more == 7 straight, bit for bit."""
    straight, _ = golden_solver("solver_step")
    straight.step(7)
    first, _ = golden_solver("solver_step")
    first.step(4)
    first.param.snapshot_prefix = str(tmp_path / "s")
    first.snapshot()
    second, _ = golden_solver("solver_step")
    second.restore(str(tmp_path / "s_iter_4.solverstate"))
    second.step(3)
    for key, w in blobs(straight.net).items():
        assert np.array_equal(w, blobs(second.net)[key]), key
    for a, b in zip(straight.sgd.history, second.sgd.history):
        assert torch.equal(a, b)


def test_restore_rejects_wrong_history(tmp_path):
    solver, _ = golden_solver("solver_step")
    solver.param.snapshot_prefix = str(tmp_path / "s")
    solver.snapshot()
    other = Net('name: "n" layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 '
                'dim: 4 dim: 4 } } } layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                'convolution_param { num_output: 2 kernel_size: 1 } }', phase="TRAIN")
    s = Solver(solver.param, other, lambda b: {}, progress=False)
    with pytest.raises(CaffeError, match="history blobs"):
        s.restore(str(tmp_path / "s_iter_0.solverstate"))


# ------------------------------------------------------------------ the update rule by hand
def make_params(*specs):
    """LearnableParams from (w, grad, lr_mult, decay_mult) tuples."""
    out = []
    for i, (w, g, lr, decay) in enumerate(specs):
        p = nn.Parameter(torch.tensor(w, dtype=torch.float32))
        p.grad = None if g is None else torch.tensor(g, dtype=torch.float32)
        out.append(LearnableParam(f"l{i}", 0, p, lr, decay))
    return out


def solver_param(**kw):
    p = pb.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=10)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def test_one_sgd_step_by_hand():
    """rate 0.1, momentum 0.9, weight_decay 0.01:
    param a (lr_mult 2, decay_mult 0.5, history [0.1, 0]):
      diff = g + 0.01*0.5*w = [0.5 + 0.005, 0.25 - 0.01] = [0.505, 0.24]
      v = 0.9*[0.1, 0] + 0.2*diff = [0.191, 0.048]; w = [1 - 0.191, -2 - 0.048]
    param b (lr_mult 0, decay_mult 0): unchanged.  param c (no path to the loss, grad None,
    lr_mult 1, decay_mult 1): diff = 0.01*w = [0.04]; v = 0.1*0.04 = 0.004; w = 3.996."""
    params = make_params(([1.0, -2.0], [0.5, 0.25], 2.0, 0.5), ([5.0], [7.0], 0.0, 0.0), ([4.0], None, 1.0, 1.0))
    sgd = SGD(params, solver_param(momentum=0.9, weight_decay=0.01))
    sgd.history[0].copy_(torch.tensor([0.1, 0.0]))
    sgd.update(0.1)
    np.testing.assert_allclose(params[0].param.detach().numpy(), [0.809, -2.048], rtol=1e-6)
    np.testing.assert_allclose(sgd.history[0].numpy(), [0.191, 0.048], rtol=1e-6)
    assert params[1].param.item() == 5.0
    np.testing.assert_allclose(params[2].param.item(), 3.996, rtol=1e-6)


def test_each_solver_type_is_its_own_optimizer_subclass():
    from caffe.solvers.update import OPTIMIZERS, TYPES, solver_optimizer
    assert set(OPTIMIZERS) == set(TYPES)
    params = make_params(([1.0, 2.0], [0.5, -0.5], 1, 1))
    for name in TYPES:
        opt = solver_optimizer(params, solver_param(type=name))
        assert type(opt).__name__ == name and isinstance(opt, torch.optim.Optimizer)
        assert len(opt.history) == (2 if name in ("AdaDelta", "Adam") else 1)
    assert type(solver_optimizer(params, solver_param())).__name__ == "SGD"


def test_iter_size_normalises_and_l1_decay():
    """iter_size 4 divides the accumulated diff by 4 before decay; L1 decays by sign(w):
    diff = 8/4 + 0.1*sign(-3) = 1.9; v = 0.5*1.9 = 0.95; w = -3.95."""
    params = make_params(([-3.0], [8.0], 1.0, 1.0))
    sgd = SGD(params, solver_param(iter_size=4, weight_decay=0.1, regularization_type="L1"))
    sgd.update(0.5)
    np.testing.assert_allclose(params[0].param.item(), -3.95, rtol=1e-6)


def test_clip_gradients_global_norm():
    """Diffs [3, 4] and [0]: global L2 norm 5 > 1 scales every diff by 0.2; below: untouched."""
    params = make_params(([0.0, 0.0], [3.0, 4.0], 1.0, 1.0), ([0.0], [0.0], 1.0, 1.0))
    sgd = SGD(params, solver_param(clip_gradients=1.0))
    assert sgd.clip_gradients() == pytest.approx((5.0, 0.2))
    np.testing.assert_allclose(params[0].param.grad.numpy(), [0.6, 0.8], rtol=1e-6)
    assert sgd.clip_gradients() is None  # norm now 1, not above


# ------------------------------------------------------------------ learning rates by hand
@pytest.mark.parametrize("fields, it, rate", [
    (dict(lr_policy="fixed", base_lr=0.01), 12345, 0.01),
    (dict(lr_policy="step", base_lr=0.01, gamma=0.1, stepsize=100), 99, 0.01),
    (dict(lr_policy="step", base_lr=0.01, gamma=0.1, stepsize=100), 100, 0.001),
    (dict(lr_policy="step", base_lr=0.01, gamma=0.1, stepsize=100), 250, 0.0001),
    (dict(lr_policy="exp", base_lr=1.0, gamma=0.99), 2, 0.9801),
    (dict(lr_policy="inv", base_lr=0.01, gamma=1e-4, power=0.75), 10000, 0.01 * 2 ** -0.75),
    (dict(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[10, 20]), 9, 1.0),
    (dict(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[10, 20]), 10, 0.5),
    (dict(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[10, 20]), 1000, 0.25),
    (dict(lr_policy="poly", base_lr=0.001, power=0.9, max_iter=6000), 0, 0.001),
    (dict(lr_policy="poly", base_lr=0.001, power=0.9, max_iter=6000), 3000, 0.001 * 0.5 ** 0.9),
    (dict(lr_policy="poly", base_lr=0.001, power=0.9, max_iter=6000), 6000, 0.0),
    (dict(lr_policy="sigmoid", base_lr=1.0, gamma=0.1, stepsize=50), 50, 0.5),
    (dict(lr_policy="sigmoid", base_lr=1.0, gamma=0.1, stepsize=50), 60, 1 / (1 + math.exp(-1))),
])
def test_learning_rate_policies(fields, it, rate):
    p = pb.SolverParameter()
    for k, v in fields.items():
        getattr(p, k).extend(v) if isinstance(v, list) else setattr(p, k, v)
    assert lr_at(p, it) == pytest.approx(rate, rel=1e-6, abs=1e-12)


def test_multistep_steps_one_per_iteration_like_caffe():
    p = pb.SolverParameter(lr_policy="multistep", base_lr=1.0, gamma=0.5, stepvalue=[3, 5])
    step, rates = 0, []
    for it in range(7):
        rate, step = learning_rate(p, it, step)
        rates.append(rate)
    assert rates == [1, 1, 1, 0.5, 0.5, 0.25, 0.25] and step == 2


def test_bad_solver_values_are_errors():
    with pytest.raises(CaffeError, match="unknown lr_policy 'cosine'"):
        Solver(pb.SolverParameter(lr_policy="cosine"), None, None)
    with pytest.raises(CaffeError, match="needs stepsize"):
        learning_rate(pb.SolverParameter(lr_policy="step", base_lr=1), 0)


# ------------------------------------------------------------------ iter_size
def test_iter_size_2_equals_doubled_batch():
    """iter_size 2 over two halves == one pass over the doubled batch (Caffe divides the
    accumulated diff by iter_size; labels without ignore pixels, so every half normalises
    the loss by the same count; no clipping, which acts on the undivided sum)."""
    z = np.load(GOLDEN / "solver_step" / "trajectory.npz")
    data = [torch.from_numpy(z[f"data_{t}"]) for t in range(4)]
    label = [torch.from_numpy(np.where(z[f"label_{t}"] == 255, 1, z[f"label_{t}"])) for t in range(4)]
    param = parse_solver(GOLDEN / "solver_step" / "solver.prototxt")
    assert param.iter_size == 2
    halves, _ = golden_solver("solver_step", param=param,
                              batch=lambda b: {"data": data[b], "label": label[b]})
    single = pb.SolverParameter()
    single.CopyFrom(param)
    single.iter_size = 1
    doubled, _ = golden_solver("solver_step", param=single, batch=lambda b: {
        "data": torch.cat(data[2 * b:2 * b + 2]), "label": torch.cat(label[2 * b:2 * b + 2])})
    halves.step(2)
    doubled.step(2)
    for key, w in blobs(halves.net).items():
        assert_close(w, blobs(doubled.net)[key], str(key))
    assert halves.smoothed() == pytest.approx(doubled.smoothed(), rel=1e-5)


def test_display_lines_in_caffe_format():
    lines = []
    solver, _ = golden_solver("solver_poly", log=lambda where, msg, level="I": lines.append(f"{where}] {msg}"))
    solver.step(2)
    assert lines[0].startswith("solver.cpp:228] Iteration 0, loss = 1.1175")
    assert lines[1].startswith("solver.cpp:244]     Train net output #0: loss = 1.1175")
    assert lines[1].endswith(" loss)") and "(* 1 = 1.1175" in lines[1]
    assert lines[2] == "sgd_solver.cpp:106] Iteration 0, lr = 0.05"
    assert "Iteration 1, lr = 0.0435229" in lines[5]  # 0.05 * (1 - 1/7)^0.9


def test_share_weights_follows_caffes_first_test_layer_of_a_name():
    """ShareTrainedLayersWith: each train layer shares with the FIRST test layer of its name, so
    with a repeated name the later train layer wins that test layer, and the test net's second
    layer of the name keeps its own blobs."""
    from caffe.net import Net
    from caffe.solvers.solver import share_weights

    text = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }
    layer { name: "a" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 1 kernel_size: 1 } }
    layer { name: "a" type: "Convolution" bottom: "y" top: "z" convolution_param { num_output: 1 kernel_size: 1 } }
    """
    train, test = Net(text, "TRAIN"), Net(text, "TEST")
    share_weights(train, test)
    assert test.layers[1].blobs[0] is train.layers[2].blobs[0]
    assert test.layers[2].blobs[0] is not train.layers[1].blobs[0]
    assert test.layers[2].blobs[0] is not train.layers[2].blobs[0]


def first_golden_batch(name):
    """A feed that gives the golden net its first batch every time."""
    z = np.load(GOLDEN / name / "trajectory.npz")
    return lambda b: {"data": torch.from_numpy(z["data_0"]), "label": torch.from_numpy(z["label_0"])}


def test_time_budget_fits_max_iter_to_the_pace(monkeypatch):
    """deeplab-train --time-budget: from iteration 20 on, max_iter becomes what the pace allows
    (here 1 s per iteration and 35 s: 35 iterations), logged, and solve stops there."""
    import caffe.solvers.solver as solver_module
    lines = []
    param = parse_solver(GOLDEN / "solver_poly" / "solver.prototxt")
    param.max_iter, param.display, param.snapshot_after_train = 100, 0, False
    solver, _ = golden_solver("solver_poly", param=param, log=lambda where, msg, level="I": lines.append(msg),
                              batch=first_golden_batch("solver_poly"))
    monkeypatch.setattr(solver_module.time, "monotonic", lambda: float(solver.iter))  # 1 s per iteration
    solver.time_budget = 35.0
    solver.solve()
    assert solver.iter == 35 and solver.param.max_iter == 35
    assert any("Time budget 35 s" in m and "max_iter 100 -> 35" in m for m in lines)
    assert learning_rate(solver.param, 34)[0] > 0  # "poly" follows the new max_iter


def test_time_budget_never_raises_max_iter_above_the_solvers(monkeypatch):
    import caffe.solvers.solver as solver_module
    solver, _ = golden_solver("solver_poly", batch=first_golden_batch("solver_poly"))
    monkeypatch.setattr(solver_module.time, "monotonic", lambda: float(solver.iter))
    planned, solver.param.snapshot_after_train = solver.param.max_iter, False
    solver.time_budget = 1e6
    solver.solve()
    assert solver.iter == planned


def test_fp16_steps_through_gradscaler_and_redoes_an_overflowed_iteration():
    """amp fp16: torch.amp.GradScaler scales the loss; an overflow skips the update, halves the
    scale, logs it and redoes the iteration (the iteration count does not move)."""
    lines = []
    ref, _ = golden_solver("solver_poly")
    solver = Solver(ref.param, ref.net, first_golden_batch("solver_poly"), amp="fp16", progress=False,
                    log=lambda where, msg, level="I": lines.append(msg))
    assert solver.scaler.is_enabled() and solver.scaler.get_scale() == 2.0 ** 16
    solver.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # float16 gradients overflow
    before = blobs(solver.net)
    solver.step(1)
    assert solver.iter == 1
    assert any("fp16 gradients overflowed; loss scale now 6.33825e+29" in m for m in lines)
    after = blobs(solver.net)
    assert any(not np.array_equal(after[k], before[k]) for k in before)   # the redone iteration updated
    assert all(np.isfinite(v).all() for v in after.values())
