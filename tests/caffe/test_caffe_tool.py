"""The ``caffe`` command (caffe.tool): Caffe's flags, train / test / time / device_query, glog
lines and files, signal effects, and one-line errors."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from test_train import make_dataset, weights
from caffe import CaffeError, tool
from caffe.model_io import load_solverstate

TINY = FIXTURES / "tiny"
CAFFE = shutil.which("caffe", path=os.path.dirname(sys.executable))
GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ ([\w.]+:\d+)\] (.*)$")


def fill(src, dst, **values):
    """What the release's sub.sed does: replace each ${NAME} by its value."""
    text = src.read_text()
    for k, v in values.items():
        text = text.replace("${" + k + "}", str(v))
    dst.write_text(text)
    return dst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny dataset, its net and a solver with every placeholder filled (as after sed)."""
    root = tmp_path_factory.mktemp("caffe_tool")
    data = make_dataset(root / "data")
    fill(TINY / "train_test.prototxt", root / "net.prototxt", ROOT=data, BATCH=2, DROPOUT=0)
    fill(TINY / "solver.prototxt", root / "solver.prototxt", NET=root / "net.prototxt", MAX_ITER=6, SNAPSHOT=3,
         PREFIX=root / "snap" / "tiny")
    return root


def messages(path, where=None):
    """The message part of each glog line of a log file (optionally only from ``where``)."""
    out = []
    for line in path.read_text().splitlines():
        m = GLOG.match(line)
        if m and (where is None or m.group(2) == where):
            out.append(m.group(3))
    return out


def glog_file(log_dir):
    link = log_dir / "caffe.INFO"
    assert link.is_symlink()
    return log_dir / os.readlink(link)


# ------------------------------------------------------------------ flags
def test_flags_are_read_as_gflags_reads_them():
    rest, flags = tool.parse_flags(["train", "--solver=s.prototxt", "-weights", "a.caffemodel,b.caffemodel",
                                    "-gpu=0,1", "--iterations", "7", "--level=2", "-stage", "x,y", "--", "-z"])
    assert rest == ["train", "-z"]
    assert (flags["solver"], flags["weights"], flags["gpu"]) == ("s.prototxt", "a.caffemodel,b.caffemodel", "0,1")
    assert (flags["iterations"], flags["level"], flags["stage"]) == (7, 2, "x,y")
    _, defaults = tool.parse_flags([])
    assert (defaults["iterations"], defaults["sigint_effect"], defaults["sighup_effect"]) == (50, "stop", "snapshot")
    for argv, text in ((["--solverr=x"], "unknown command line flag 'solverr'"),
                       (["--solver"], "flag 'solver' is missing its argument"),
                       (["--iterations=ten"], "illegal value 'ten' specified for int32 flag 'iterations'")):
        with pytest.raises(CaffeError, match=re.escape(text)):
            tool.parse_flags(argv)


@pytest.mark.parametrize("argv, text", [
    (["brew"], "unknown action: brew"),
    (["train"], "need a solver definition"),
    (["test", "--model=m.prototxt"], "need model weights"),
    (["time"], "need a model definition"),
    (["train", "--solver=s", "--sigint_effect=later"], 'invalid signal effect "later"'),
    (["test", "--model=m", "--weights=w", "--phase=VAL"], 'phase must be "TRAIN" or "TEST"'),
])
def test_bad_commands_and_flags_are_caffe_errors(argv, text):
    with pytest.raises(CaffeError, match=re.escape(text)):
        tool.main(argv)


def test_errors_are_one_line_without_a_traceback(tiny, tmp_path):
    cases = [(["train", "--solver=missing.prototxt"], "missing.prototxt")]
    if not torch.cuda.is_available():
        cases = [(["train", f"--solver={tiny / 'solver.prototxt'}", "--gpu=0"],
                  "--gpu 0: CUDA is not available on this machine")]
    for argv, text in cases:
        proc = subprocess.run([CAFFE, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and err[-1].startswith("error: ") and text in err[-1], proc.stderr
        assert "Traceback" not in proc.stderr and not any(line.startswith("error") for line in err[:-1])
    with pytest.raises(CaffeError, match="not both"):
        tool.main(["train", f"--solver={tiny / 'solver.prototxt'}", "--weights=a.caffemodel", "--snapshot=b"])
    with pytest.raises(CaffeError, match="no such file"):
        tool.main(["train", f"--solver={tmp_path / 'missing.prototxt'}"])


def test_device_query(tmp_path):
    assert tool.main(["device_query", f"--log_dir={tmp_path}"]) == 0
    text = messages(glog_file(tmp_path))
    if torch.cuda.is_available():  # every visible GPU, Caffe's "Device id:" block first
        assert [m for m in text if m.startswith("Device id:")] == \
               [f"{'Device id:':<31}{i}" for i in range(torch.cuda.device_count())]
    else:
        assert any(m.startswith("No GPU: CUDA is not available") for m in text)
        with pytest.raises(CaffeError, match="CUDA is not available"):
            tool.main(["device_query", "--gpu=0"])


# ------------------------------------------------------------------ train, test
def test_train_then_resume_then_test(tiny, tmp_path):
    log_dir = tmp_path / "log"
    solver = str(tiny / "solver.prototxt")
    assert tool.main(["train", "-solver", solver, f"--log_dir={log_dir}"]) == 0
    text = messages(glog_file(log_dir))
    for line in ("Use CPU.", "Starting Optimization", "Optimization Done."):
        assert line in text
    snap = tiny / "snap"
    assert sorted(p.name for p in snap.iterdir()) == [f"tiny_iter_{i}.{e}" for i in (3, 6)
                                                     for e in ("caffemodel", "solverstate")]
    # --snapshot resumes from iteration 3; --weights copies layers by name (max_iter 0 saves them as they came).
    assert tool.main(["train", f"--solver={solver}", f"--snapshot={snap / 'tiny_iter_3.solverstate'}"]) == 0
    assert load_solverstate(snap / "tiny_iter_6.solverstate").iter == 6
    zero = fill(TINY / "solver.prototxt", tmp_path / "zero.prototxt", NET=tiny / "net.prototxt", MAX_ITER=0,
                SNAPSHOT=0, PREFIX=tmp_path / "ft")
    assert tool.main(["train", f"--solver={zero}", f"--weights={snap / 'tiny_iter_6.caffemodel'}"]) == 0
    copied, source = weights(tmp_path / "ft_iter_0.caffemodel"), weights(snap / "tiny_iter_6.caffemodel")
    assert copied.keys() == source.keys() and all(np.array_equal(copied[k], source[k]) for k in source)

    # caffe test: each output element per batch, then the means; the loss with its weight.
    model = snap / "tiny_iter_6.caffemodel"
    assert tool.main(["test", f"--model={tiny / 'net.prototxt'}", f"--weights={model}", "--iterations=2",
                      f"--log_dir={log_dir}"]) == 0
    text = messages(glog_file(log_dir))
    assert "Running for 2 iterations." in text
    batches = {}
    for m in text:
        found = re.match(r"Batch (\d), (\w+) = (\S+)$", m)
        if found:
            batches.setdefault(found.group(2), []).append((int(found.group(1)), float(found.group(3))))
    # SegAccuracy has 3 values (pixel acc, mean class acc, mean IoU), the loss 1; val.txt has 4 images, batch 2.
    assert {k: [b for b, _ in v] for k, v in batches.items()} == {"accuracy": [0, 0, 0, 1, 1, 1], "loss": [0, 1]}
    means = [m for m in text if re.match(r"(accuracy|loss) = ", m)]
    assert len(means) == 4
    acc = np.array([v for _, v in batches["accuracy"]]).reshape(2, 3).mean(0)
    for line, expect in zip(means[:3], acc):
        assert line.startswith("accuracy = ") and float(line.split()[2]) == pytest.approx(expect, rel=1e-5)
    loss = np.mean([v for _, v in batches["loss"]])
    assert re.fullmatch(r"loss = (\S+) \(\* 1 = (\S+) loss\)", means[3])
    assert float(means[3].split()[2]) == pytest.approx(loss, rel=1e-5)
    assert [m for m in text if m.startswith("Loss: ")] == [means[3].split(" (")[0].replace("loss = ", "Loss: ")]


def test_test_needs_a_data_layer(tmp_path):
    net = tmp_path / "deploy.prototxt"
    net.write_text('name: "d" input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4\n'
                   'layer { name: "conv" type: "Convolution" bottom: "data" top: "out" '
                   'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    from caffe.net import Net
    Net(str(net)).save(tmp_path / "w.caffemodel")
    with pytest.raises(CaffeError, match=r"layer 'input' \(Input\): .*caffe test .* read data only through ImageSegData"):
        tool.main(["test", f"--model={net}", f"--weights={tmp_path / 'w.caffemodel'}", "--iterations=1"])


def _train_until_signal(tiny, tmp_path, effect, max_iter):
    solver = fill(TINY / "solver.prototxt", tmp_path / "solver.prototxt", NET=tiny / "net.prototxt",
                  MAX_ITER=max_iter, SNAPSHOT=0, PREFIX=tmp_path / "s")
    proc = subprocess.Popen([CAFFE, "train", f"--solver={solver}", f"--sigint_effect={effect}"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        for line in proc.stderr:
            if "Iteration 5, loss" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 0, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    return rest, sorted(load_solverstate(p).iter for p in tmp_path.glob("s_iter_*.solverstate"))


def test_sigint_effect_snapshot_snapshots_and_goes_on(tiny, tmp_path):
    rest, iters = _train_until_signal(tiny, tmp_path, "snapshot", 40)
    assert len(iters) == 2 and 5 < iters[0] < 40 and iters[1] == 40  # one on SIGINT, one at the end
    assert "Optimization stopped early." not in rest and "Optimization Done." in rest


def test_sigint_effect_stop_snapshots_and_ends_with_status_0_as_caffe(tiny, tmp_path):
    rest, iters = _train_until_signal(tiny, tmp_path, "stop", 100000)
    assert len(iters) == 1 and iters[0] > 5
    assert "Optimization stopped early." in rest


# ------------------------------------------------------------------ time
STAGED = """name: "timed"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "extra" type: "ReLU" bottom: "conv" top: "conv" include { stage: "extra" } }
layer { name: "split_a" type: "Convolution" bottom: "conv" top: "a"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "split_b" type: "Convolution" bottom: "conv" top: "b"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" loss_weight: 2 }
"""


def test_time_logs_every_layer_and_stage_selects_layers(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(STAGED)
    for stage, extra in (("", False), ("extra", True)):
        log_dir = tmp_path / f"log{stage}"
        assert tool.main(["time", f"--model={net}", "--iterations=2", f"--stage={stage}", f"--log_dir={log_dir}"]) == 0
        text = messages(glog_file(log_dir))
        names = [m.split("\t")[0].strip() for m in text if "\tforward: " in m]
        assert names == ["data", "conv"] + (["extra"] if extra else []) + ["split_a", "split_b", "sum", "loss"]
        assert len([m for m in text if "\tbackward: " in m]) == len(names)
        assert [m.split(" forward-backward")[0] for m in text if m.startswith("Iteration: ")] == \
               ["Iteration: 1", "Iteration: 2"]
        for head in ("Average Forward pass: ", "Average Backward pass: ", "Average Forward-Backward: ",
                     "Total Time: ", "Initial loss: "):
            assert sum(m.startswith(head) for m in text) == 1, head
    # All zeros in: every class scores alike, so the initial loss is 2 * ln(3).
    loss = [m for m in text if m.startswith("Initial loss: ")][0]
    assert float(loss.split()[-1]) == pytest.approx(2 * np.log(3), rel=1e-5)


def test_time_compile_times_the_compiled_forward_and_refuses_what_cannot_compile(tmp_path, monkeypatch):
    from caffe import compiled
    from test_compiled import NET
    monkeypatch.setattr(compiled, "BACKEND", "eager")     # the wiring; test_compiled.py compiles with inductor
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    log_dir = tmp_path / "log"
    assert tool.main(["time", f"--model={net}", "--iterations=2", "--compile", f"--log_dir={log_dir}"]) == 0
    text = messages(glog_file(log_dir))
    assert sum(m.startswith("First forward (export, compile, forward): ") for m in text) == 1
    assert [m.split(" forward time")[0] for m in text if m.startswith("Iteration: ")] == \
           ["Iteration: 1 compiled", "Iteration: 2 compiled", "Iteration: 1 uncompiled", "Iteration: 2 uncompiled"]
    for head in ("Average Forward pass: ", "Average Forward pass uncompiled (planned, no autograd): "):
        assert sum(m.startswith(head) for m in text) == 1, head
    staged = tmp_path / "staged.prototxt"
    staged.write_text(STAGED)
    with pytest.raises(CaffeError, match=r"cannot be compiled: .*'loss' \(SoftmaxWithLoss\)"):
        tool.main(["time", f"--model={staged}", "--compile"])


def test_layer_by_layer_backward_gives_the_nets_gradients():
    """The timed backward (layer by layer, diffs summed where a blob feeds two layers) leaves
    the same param diffs as autograd over the whole net."""
    from caffe.net import Net
    from caffe.tool.timing import _Pass
    torch.manual_seed(0)
    net = Net(STAGED, "TRAIN", stages=["extra"])
    inputs = {"data": torch.randn(2, 3, 8, 8), "label": torch.randint(0, 3, (2, 1, 8, 8)).float()}
    net.loss(net(inputs)).backward()
    expected = [p.grad.clone() for p in net.parameters()]
    run = _Pass(net, "cpu")
    loss = run.forward(lambda: dict(inputs), [0.0] * len(net.layers))
    run.backward([0.0] * len(net.layers))
    assert loss == pytest.approx(float(net.loss(net(inputs)).detach()), rel=1e-6)
    for p, e in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ignored", [False, True])
@pytest.mark.parametrize("effect", ["stop", "snapshot", "none"])
def test_signal_effects_ask_the_solver_for_what_the_flags_say(effect, ignored):
    """--sigint_effect / --sighup_effect: what a SIGINT or SIGHUP asks the running solver for;
    afterwards the handlers are what they were, SIGINT ignored included (a process started in
    the background from a script starts so)."""
    from caffe.solvers.solver import Solver
    solver = Solver.__new__(Solver)  # only the signal handling, no net
    solver.sigint_effect = solver.sighup_effect = effect
    outer = signal.getsignal(signal.SIGINT)
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP)}
        for sig in (signal.SIGINT, signal.SIGHUP):
            solver._request = None
            with solver._signals():
                os.kill(os.getpid(), sig)
            assert solver._request == {"none": None}.get(effect, effect), (sig, effect)
        assert {sig: signal.getsignal(sig) for sig in before} == before  # restored afterwards
    finally:
        signal.signal(signal.SIGINT, outer)
