"""Training reads no device value between displays (issue 25 item 13), tested on the CPU.

With caffe.syncedmem.separate answering True, the CPU tensors count as a device's, so the
solver defers its checks as on a GPU; reading a tensor's value on the host (``bool``, ``float``,
``int``, ``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``), a wait for the device there, is
counted with a torch function mode.
"""
from __future__ import annotations

import collections
import pathlib

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from caffe import CaffeError, checks, syncedmem
from caffe.net import Net
from caffe.prototxt import parse_solver
from caffe.solvers.solver import Solver

GOLDEN = pathlib.Path(__file__).parent.parent / "fixtures" / "golden" / "solver_poly"
READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy", "cpu"}


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's value on the host."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def on_device(monkeypatch):
    monkeypatch.setattr(syncedmem, "separate", lambda device: True)


def solver(display=0, bad_label_at=None, nan_at=None):
    z = np.load(GOLDEN / "trajectory.npz")
    param = parse_solver(GOLDEN / "solver.prototxt")
    param.snapshot, param.display, param.clip_gradients, param.max_iter = 0, display, -1, 100
    net = Net(GOLDEN / "train.prototxt", phase="TRAIN")
    net.copy_from(GOLDEN / "init.caffemodel")

    def feed(b):
        data, label = torch.from_numpy(z["data_0"]).clone(), torch.from_numpy(z["label_0"]).clone()
        if b == bad_label_at:
            label[0, 0, 0, 0] = 7
        if b == nan_at:
            data[0, 0, 0, 0] = float("nan")
        return {"data": data, "label": label}
    lines = []
    return Solver(param, net, feed, progress=False, log=lambda where, msg, level="I": lines.append(msg)), lines


def test_no_host_read_between_displays(on_device):
    s, _ = solver(display=0)
    s.step(1)
    with HostReads() as reads:
        s.step(8)
    assert reads.calls == {"tolist": 1}     # the one flush of the kept checks, when the steps end


def test_a_display_reads_the_kept_checks_once(on_device):
    s, lines = solver(display=4)
    s.step(1)
    shown = len(lines)
    with HostReads() as reads:
        s.step(3)
    assert reads.calls == {"tolist": 1} and not any("loss =" in line for line in lines[shown:])
    with HostReads() as reads:
        s.step(1)                           # iteration 4 displays: flush, smoothed loss, outputs
    assert reads.calls["tolist"] == 2 and reads.calls["__float__"] == 1


def run_to_error(s, iters):
    with pytest.raises(CaffeError) as e:
        s.step(iters)
    return str(e.value), s.iter


@pytest.mark.parametrize("fault", ["bad_label_at", "nan_at"])
def test_deferred_errors_are_the_immediate_ones_at_display_time(monkeypatch, fault):
    message, at = run_to_error(solver(display=4, **{fault: 1})[0], 8)
    assert at == 1
    monkeypatch.setattr(syncedmem, "separate", lambda device: True)
    deferred, later = run_to_error(solver(display=4, **{fault: 1})[0], 8)
    assert deferred == message and later == 4
    expected = ("label values [7] are outside 0..2" if fault == "bad_label_at"
                else "iteration 1: the loss is nan (non-finite loss blob(s) loss)")
    assert expected in message


def test_a_failed_check_stops_the_snapshot(on_device, tmp_path):
    s, _ = solver(bad_label_at=2)
    s.param.snapshot, s.param.snapshot_prefix = 3, str(tmp_path / "snap")
    message, at = run_to_error(s, 6)
    assert at == 3 and "label values [7]" in message and not list(tmp_path.iterdir())


def test_checks_are_immediate_outside_training(on_device):
    flag = torch.tensor(True)
    with pytest.raises(ValueError, match="now"):
        checks.check(flag, lambda: ValueError("now"))
    with checks.deferred():
        checks.check(flag, lambda: ValueError("later"))
        with pytest.raises(ValueError, match="later"):
            checks.flush()
        checks.check(torch.tensor(False), lambda: ValueError("never"))


def test_distributed_runs_agree_on_signals_every_ten_iterations(monkeypatch):
    from caffe.solvers import parallel
    agreed = []

    def agree(request, device):
        agreed.append(request)
        return request
    monkeypatch.setattr(parallel, "agree_request", agree)
    s, _ = solver()
    s.world = 2                             # (the net stays local: only the agreement is counted)
    s.step(25)
    assert agreed == [None, None]
    s._request = "stop"                     # a signal arrives: acted on at the next agreement
    s.step(25)
    assert agreed == [None, None, "stop"] and s.iter == 30 and s.stopped_early
