"""pycaffe's names from BVLC's python/train.py: Timer, init_log/log, solver_count/rank,
set_multiprocess, NCCL (torch.distributed; gloo with CPU processes here), Solver.type, and
Layer.setup/reshape.

The training script below is BVLC's python/train.py pattern (multiprocessing, NCCL.new_uid in
the parent, bcast, add_callback(nccl), after_backward(nccl) with layer_wise_reduce) with the
CPU in place of GPUs. Two processes with one sample each must end where one process with
both samples ends: EuclideanLoss normalises by the batch size, so the mean of the two
processes' diffs is the diff of the combined batch.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import caffe
from caffe import CaffeError

DATA_LAYER = '''
import caffe
import numpy as np


class Samples(caffe.Layer):
    """Sample k of iteration i is x = (i + 1, k - 1, 1) with target (x0 - x1, 2 x2); a process of
    rank r among n takes samples r, r + n, ... of each iteration's global batch."""

    def setup(self, bottom, top):
        self.batch = int(self.param_str)
        self.iteration = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, 3)
        top[1].reshape(self.batch, 2)

    def forward(self, bottom, top):
        n, r = caffe.solver_count(), caffe.solver_rank()
        for j in range(self.batch):
            k = r + j * n
            x = np.array([self.iteration + 1.0, k - 1.0, 1.0])
            top[0].data[j] = x
            top[1].data[j] = [x[0] - x[1], 2 * x[2]]
        self.iteration += 1
'''

NET = """name: 'reg'
layer { name: 'data' type: 'Python' top: 'x' top: 'y'
  python_param { module: 'samples' layer: 'Samples' param_str: '%d' } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'p'
  inner_product_param { num_output: 2 weight_filler { type: 'gaussian' std: 1 } } }
layer { name: 'loss' type: 'EuclideanLoss' bottom: 'p' bottom: 'y' top: 'loss' }
"""

TRAIN = '''
"""Trains with one process per device, as BVLC's python/train.py (CPU processes here)."""
from multiprocessing import Process
import sys

import caffe


def train(solver, out, devices):
    uid = caffe.NCCL.new_uid()
    caffe.init_log()
    caffe.log('Using devices %s' % str(devices))
    procs = []
    for rank in range(len(devices)):
        p = Process(target=solve, args=(solver, out, devices, uid, rank))
        p.daemon = True
        p.start()
        procs.append(p)
    for p in procs:
        p.join()
    return max(p.exitcode for p in procs)


def solve(proto, out, devices, uid, rank):
    caffe.set_mode_cpu()
    caffe.set_solver_count(len(devices))
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    solver = caffe.SGDSolver(proto)
    nccl = caffe.NCCL(solver, uid)
    nccl.bcast()
    if rank == 0:
        solver.net.save(out + '_init.caffemodel')
    total = caffe.Timer()
    solver.add_callback(lambda: total.start(), lambda: total.stop())
    solver.add_callback(nccl)
    if solver.param.layer_wise_reduce:
        solver.net.after_backward(nccl)
    solver.step(solver.param.max_iter)
    assert total.ms >= 0
    solver.net.save(out + '_rank%d.caffemodel' % rank)


if __name__ == '__main__':
    sys.exit(train(sys.argv[1], sys.argv[2], [0, 1]))
'''


def _solver(tmp_path, batch, layer_wise, name):
    (tmp_path / "samples.py").write_text(DATA_LAYER)
    net = tmp_path / f"{name}_net.prototxt"
    net.write_text(NET % batch)
    path = tmp_path / f"{name}_solver.prototxt"
    path.write_text(f"net: '{net}'\nbase_lr: 0.05 lr_policy: 'fixed' momentum: 0.9 weight_decay: 0.01\n"
                    f"max_iter: 3 display: 1 snapshot: 0 snapshot_prefix: '{tmp_path / name}'\n"
                    f"layer_wise_reduce: {str(layer_wise).lower()}\n")
    return str(path)


def _ip(path):
    from caffe.model_io import load_caffemodel
    return {b.name: b.blobs for b in load_caffemodel(path) if b.name == "ip"}["ip"]


@pytest.mark.parametrize("layer_wise", [True, False])
def test_train_py_pattern_two_gloo_processes_equal_one_with_both_samples(tmp_path, monkeypatch, layer_wise):
    two = _solver(tmp_path, 1, layer_wise, "two")
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, str(script), two, str(tmp_path / "two")], capture_output=True,
                          text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Using devices [0, 1]" in proc.stderr
    assert proc.stderr.count("Iteration 0, loss") == 1          # only the root solver logs
    rank0, rank1 = _ip(str(tmp_path / "two_rank0.caffemodel")), _ip(str(tmp_path / "two_rank1.caffemodel"))
    for a, b in zip(rank0, rank1):
        np.testing.assert_array_equal(a, b)                     # bcast, then the same updates
    # One process, both samples of each iteration, from rank 0's initial weights.
    monkeypatch.syspath_prepend(str(tmp_path))
    one = caffe.SGDSolver(_solver(tmp_path, 2, layer_wise, "one"))
    one.net.copy_from(str(tmp_path / "two_init.caffemodel"))
    one.step(3)
    np.testing.assert_allclose(rank0[0], one.net.params["ip"][0].data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rank0[1], one.net.params["ip"][1].data, rtol=1e-5, atol=1e-6)
    init = _ip(str(tmp_path / "two_init.caffemodel"))
    assert not np.allclose(init[0], rank0[0])                  # it did train


def test_names_singletons_timer_and_solver_type(tmp_path, monkeypatch, capsys):
    assert (caffe.solver_count(), caffe.solver_rank()) == (1, 0)
    caffe.set_solver_count(3)
    caffe.set_solver_rank(2)
    caffe.set_multiprocess(True)
    try:
        assert (caffe.solver_count(), caffe.solver_rank()) == (3, 2)
        from caffe._caffe.parallel import multiprocess
        assert multiprocess()
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        caffe.set_multiprocess(False)
    with pytest.raises(CaffeError):
        caffe.set_solver_count(0)
    uid = caffe.NCCL.new_uid()
    assert isinstance(uid, bytes) and caffe.has_nccl()           # BVLC's test_nccl checks bytes
    timer = caffe.Timer()
    assert timer.ms == 0                                         # never run: 0, as Caffe's
    timer.start()
    timer.stop()
    assert timer.ms >= 0 and not timer.running
    capsys.readouterr()
    caffe.init_log(0, True)
    caffe.log("hello from a script")
    assert capsys.readouterr().err.rstrip().endswith("] hello from a script")
    caffe.init_log(1)
    caffe.log("dropped")
    assert capsys.readouterr().err == ""
    caffe.init_log()
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _solver(tmp_path, 2, True, "t")
    assert caffe.SGDSolver(path).type == "SGD"
    assert caffe.AdamSolver(path).type == "Adam"
    with pytest.raises(TypeError):
        caffe.SGDSolver(path).add_callback(lambda: None)


def test_layer_setup_and_reshape_are_callables(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text("""layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'c' convolution_param { num_output: 2 kernel_size: 3 } }""")
    net = caffe.Net(str(path), caffe.TEST)
    conv = net.layers[1]
    bottom, top = [net.blobs["data"]], [net.blobs["c"]]
    conv.setup(bottom, top)
    net.blobs["data"].reshape(2, 3, 7, 7)
    conv.reshape(bottom, top)
    assert net.blobs["c"].data.shape == (2, 2, 5, 5)             # 7 - 3 + 1
    with pytest.raises(CaffeError, match="'conv' .* takes 1 bottom"):
        conv.reshape([], top)
    base = caffe.Layer()                                         # a Python layer's base class
    assert base.setup(bottom, top) is None and base.reshape(bottom, top) is None
