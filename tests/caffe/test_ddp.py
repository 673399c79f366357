"""Data-parallel training on CPU (gloo, 2 processes started by torchrun) gives the update of
one process with the combined batch.

"The same update": each process computes the gradient of its own loss (SoftmaxWithLoss
normalised over its own valid pixels) and the gradients are averaged over processes, as
Caffe's multi-GPU training averages them. With B images per process and W processes that
equals one process with W*B images exactly when every process normalises by the same count:
normalization FULL or BATCH_SIZE, or VALID (the default) with equally many non-ignored pixels
per process. So the dataset here has images at least as large as the crop and labels without
ignore pixels, and no dropout (each process draws its own masks).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from test_train import TRAIN_PY, argv, make_dataset, train, weights
from caffe.model_io import load_solverstate


def test_two_gloo_processes_equal_one_with_the_combined_batch(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=6, n_val=2, sizes=((20, 24), (18, 16)))
    assert train.main(argv(data, tmp_path / "one", 4, batch=4, dropout=0)) == 0
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(TRAIN_PY),
           *argv(data, tmp_path / "two", 4, batch=2, dropout=0, extra=["--log-file", str(tmp_path / "two.log")])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = weights(tmp_path / "one_iter_4.caffemodel"), weights(tmp_path / "two_iter_4.caffemodel")
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-7, err_msg=str(k))
    h1 = load_solverstate(tmp_path / "one_iter_4.solverstate").history
    h2 = load_solverstate(tmp_path / "two_iter_4.solverstate").history
    for a, b in zip(h1, h2):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8)
    # Only rank 0 writes: one process id in the log, one set of snapshots.
    glog = [line for line in (tmp_path / "two.log").read_text().splitlines() if re.match(r"[IWEF]\d{4} ", line)]
    pids = {line.split()[2] for line in glog}
    assert len(pids) == 1
    assert sorted(p.name for p in tmp_path.glob("two_iter_*")) == ["two_iter_4.caffemodel", "two_iter_4.solverstate"]


def test_self_spawned_processes_train_as_torchrun_started_ones(tmp_path):
    """caffe.tool.training's one-process-per-GPU launcher, run here with CPU processes (gloo): the
    same weights as one process with the combined batch; a CaffeError in the processes comes
    back to the caller as one CaffeError."""
    from caffe import CaffeError
    from caffe.tool.training import TrainOptions, _spawn
    from conftest import FIXTURES
    data = make_dataset(tmp_path / "data", n_train=6, n_val=2, sizes=((20, 24), (18, 16)))
    assert train.main(argv(data, tmp_path / "one", 2, batch=4, dropout=0)) == 0
    sets = dict(ROOT=data, NET=FIXTURES / "tiny" / "train_test.prototxt", PREFIX=tmp_path / "two", MAX_ITER=2,
                SNAPSHOT=0, BATCH=2, DROPOUT=0)
    options = TrainOptions(mapping={k: str(v) for k, v in sets.items()}, cpu=True, log_stderr=False, progress=False)
    solver = str(FIXTURES / "tiny" / "solver.prototxt")
    assert _spawn(solver, options, 2) is True
    one, two = weights(tmp_path / "one_iter_2.caffemodel"), weights(tmp_path / "two_iter_2.caffemodel")
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-7, err_msg=str(k))
    options.mapping["ROOT"] = str(tmp_path / "nothing")
    with pytest.raises(CaffeError, match="nothing/train.txt not found"):
        _spawn(solver, options, 2)
