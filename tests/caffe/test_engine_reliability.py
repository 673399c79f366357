"""Issue 24, the engine's items: axes out of range (3), the axis-count contract at reshape (4),
glog-style log files that cannot be written (6), non-positive top shapes (8), HDF5 snapshots
(11), net construction linear in layers (12), the ``caffe`` command's int32 flags and
non-finite solver fields (14), and the process group's teardown (15). Then the ``caffe``
command's bad-input catalogue: one line ``error: ...``, exit 2, no traceback."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import FIXTURES
from test_caffe_tool import fill
from test_train import make_dataset, weights
from caffe import CaffeError, tool
from caffe.net import Net

TINY = FIXTURES / "tiny"
CAFFE = shutil.which("caffe", path=os.path.dirname(sys.executable))
INPUT = 'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny dataset and its net with every placeholder filled."""
    root = tmp_path_factory.mktemp("engine24")
    data = make_dataset(root / "data")
    fill(TINY / "train_test.prototxt", root / "net.prototxt", ROOT=data, BATCH=2, DROPOUT=0)
    return root


def solver(tiny, path, extra="", **values):
    """A solver for the tiny net (``values`` override MAX_ITER, SNAPSHOT, PREFIX)."""
    sets = dict(NET=tiny / "net.prototxt", MAX_ITER=4, SNAPSHOT=2, PREFIX=path.parent / "snap" / "t")
    sets.update(values)
    fill(TINY / "solver.prototxt", path, **sets)
    path.write_text(path.read_text() + extra)
    return path


# ------------------------------------------------------------------ 3: axes out of range
@pytest.mark.parametrize("layer, fragment", [
    ('type: "Softmax" bottom: "data" top: "y" softmax_param { axis: 5 }', "(Softmax): axis 5 out of range"),
    ('type: "Softmax" bottom: "data" top: "y" softmax_param { axis: 4 }', "(Softmax): axis 4 out of range"),
    ('type: "Softmax" bottom: "data" top: "y" softmax_param { axis: -5 }', "(Softmax): axis -5 out of range"),
    ('type: "Crop" bottom: "data" bottom: "data" top: "y" crop_param { axis: 5 }', "(Crop): axis 5 out of range"),
    ('type: "Concat" bottom: "data" bottom: "data" top: "y" concat_param { axis: 4 }', "(Concat): axis 4 out"),
    ('type: "Concat" bottom: "data" bottom: "data" top: "y" concat_param { concat_dim: 4 }',
     "(Concat): concat_dim 4 out of range"),
    ('type: "Convolution" bottom: "data" top: "y" convolution_param { num_output: 2 kernel_size: 1 axis: 4 }',
     "(Convolution): convolution_param axis 4 out of range"),
    ('type: "Flatten" bottom: "data" top: "y" flatten_param { axis: 4 }', "(Flatten): axis 4 out of range"),
    ('type: "Flatten" bottom: "data" top: "y" flatten_param { end_axis: -5 }', "(Flatten): axis -5 out of range"),
    ('type: "Slice" bottom: "data" top: "y" slice_param { axis: 4 }', "(Slice): axis 4 out of range"),
    ('type: "Tile" bottom: "data" top: "y" tile_param { axis: 4 tiles: 2 }', "(Tile): axis 4 out of range"),
    ('type: "Reduction" bottom: "data" top: "y" reduction_param { axis: 4 }', "(Reduction): axis 4 out of range"),
    ('type: "InnerProduct" bottom: "data" top: "y" inner_product_param { num_output: 2 axis: 4 }',
     "(InnerProduct): axis 4 out of range"),
    ('type: "ArgMax" bottom: "data" top: "y" argmax_param { axis: 4 }', "(ArgMax): axis 4 out of range"),
    ('type: "Scale" bottom: "data" top: "y" scale_param { axis: 4 }', "(Scale): axis 4 out of range"),
    ('type: "Bias" bottom: "data" top: "y" bias_param { axis: -5 }', "(Bias): axis -5 out of range"),
])
def test_an_axis_out_of_range_is_refused_naming_the_layer(layer, fragment):
    """Caffe's CanonicalAxisIndex for every layer with an axis: refused, never wrapped."""
    with pytest.raises(CaffeError, match="layer 'x' " + fragment.replace("(", r"\(").replace(")", r"\)")):
        Net(INPUT + f'layer {{ name: "x" {layer} }}\n', "TEST")


def test_axis_layers_of_a_loss_and_accuracy_refuse_too():
    for layer in ('type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "l" softmax_param { axis: 4 }',
                  'type: "Accuracy" bottom: "data" bottom: "label" top: "a" accuracy_param { axis: 4 }',
                  'type: "InfogainLoss" bottom: "data" bottom: "label" bottom: "h" top: "l" '
                  'infogain_loss_param { axis: 4 }'):
        text = (INPUT + 'input: "label"\ninput_shape { dim: 1 dim: 1 dim: 8 dim: 8 }\n'
                'input: "h"\ninput_shape { dim: 1 dim: 1 dim: 3 dim: 3 }\n' + f'layer {{ name: "x" {layer} }}\n')
        with pytest.raises(CaffeError, match=r"layer 'x' \(\w+\): axis 4 out of range for a 4-D blob"):
            Net(text, "TEST")


def test_a_negative_axis_in_range_is_the_axis_from_the_end():
    net = Net(INPUT + 'layer { name: "x" type: "Softmax" bottom: "data" top: "y" softmax_param { axis: -1 } }\n',
              "TEST")
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(net({"data": x})["y"], torch.softmax(x, 3))


# ------------------------------------------------------------------ 4: axis count at reshape
def pycaffe_net(tmp_path, layers):
    import caffe
    p = tmp_path / "n.prototxt"
    p.write_text(INPUT + layers)
    return caffe.Net(str(p), caffe.TEST)


CONV_SOFTMAX = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                'convolution_param { num_output: 4 kernel_size: 1 } }\n'
                'layer { name: "prob" type: "Softmax" bottom: "conv" top: "prob" }\n')


def test_convolution_refuses_a_bottom_whose_axis_count_changed(tmp_path):
    """BVLC's BaseConvolutionLayer::Reshape: "bottom num_axes may not change" — at reshape and
    at forward, naming the layer and the blob (it used to return a (4, 8, 8) "prob")."""
    net = pycaffe_net(tmp_path, CONV_SOFTMAX)
    net.forward()
    net.blobs["data"].reshape(3, 8, 8)
    for run in (net.reshape, net.forward):
        with pytest.raises(CaffeError, match=r"layer 'conv' \(Convolution\): bottom num_axes may not change: "
                                             r"set up for 4-axis bottoms, but 'data' has shape \(3, 8, 8\)"):
            run()
    net.blobs["data"].reshape(2, 3, 5, 5)   # back to 4 axes: other sizes are fine, as in Caffe
    assert net.forward()["prob"].shape == (2, 4, 5, 5)


@pytest.mark.parametrize("grad", [True, False])   # without gradients the planned forward runs
def test_the_engine_net_checks_the_contract_too(grad):
    net = Net(INPUT + CONV_SOFTMAX, "TEST")
    with torch.set_grad_enabled(grad), pytest.raises(CaffeError, match="bottom num_axes may not change"):
        net({"data": torch.randn(3, 8, 8)})


@pytest.mark.parametrize("layer", [
    'type: "Pooling" bottom: "data" top: "y" pooling_param { kernel_size: 2 stride: 2 }',
    'type: "LRN" bottom: "data" top: "y"',
])
def test_four_axis_layers_refuse_another_axis_count_at_reshape(tmp_path, layer):
    net = pycaffe_net(tmp_path, f'layer {{ name: "x" {layer} }}\n')
    net.blobs["data"].reshape(1, 3, 8, 8, 1)
    with pytest.raises(CaffeError, match=r"layer 'x' \(\w+\): input must have 4 axes"):
        net.forward()


def test_axis_layers_read_their_axis_again_for_the_new_axis_count(tmp_path):
    """Caffe's Softmax::Reshape calls CanonicalAxisIndex again: axis -1 is the last axis of
    the blob as it is now; an axis that no longer exists is refused."""
    net = pycaffe_net(tmp_path, 'layer { name: "x" type: "Softmax" bottom: "data" top: "y" '
                                'softmax_param { axis: -1 } }\n')
    net.blobs["data"].reshape(2, 5)
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    net.blobs["data"].data[...] = x
    np.testing.assert_allclose(net.forward()["y"], torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-6)
    net = pycaffe_net(tmp_path, 'layer { name: "x" type: "Softmax" bottom: "data" top: "y" '
                                'softmax_param { axis: 2 } }\n')
    net.blobs["data"].reshape(2, 5)
    with pytest.raises(CaffeError, match=r"layer 'x' \(Softmax\): axis 2 out of range for a 2-D blob"):
        net.forward()


# ------------------------------------------------------------------ 8: non-positive shapes
@pytest.mark.parametrize("text, fragment", [
    ('input: "data"\ninput_shape { dim: 1 dim: 0 dim: 8 dim: 8 }\n', "top 'data' would have shape 1x0x8x8"),
    ('input: "data"\ninput_shape { dim: 1 dim: 3 dim: -3 dim: 8 }\n', "top 'data' would have shape 1x3x-3x8"),
    ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 0 dim: 3 } } }\n',
     "layer 'data' (Input): top 'data' would have shape 0x3"),
    (INPUT + 'layer { name: "pad" type: "Padding" bottom: "data" top: "p" padding_param { pad_beg: -9 } }\n',
     "layer 'pad' (Padding): top 'p' would have shape 1x3x-1x-1"),
])
def test_a_non_positive_top_shape_is_refused_at_build_time(text, fragment):
    with pytest.raises(CaffeError, match="every dimension must be positive") as e:
        Net(text, "TEST")
    assert fragment in str(e.value)


def test_caffe_time_stops_with_one_line_on_a_zero_shape(tmp_path):
    model = tmp_path / "zero.prototxt"
    model.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 0 dim: 8 '
                     'dim: 8 } } }\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    proc = subprocess.run([CAFFE, "time", f"--model={model}", "--iterations=1"], capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert err[-1].startswith("error: ") and "zero.prototxt:" in err[-1] and "1x0x8x8" in err[-1]


# ------------------------------------------------------------------ 6: log files
def test_a_log_folder_below_a_file_is_reported_once_and_the_command_goes_on(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run([CAFFE, "device_query", f"--log_dir={tmp_path / 'afile' / 'logs'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    reports = [line for line in proc.stderr.splitlines() if "COULD NOT CREATE LOGFILE" in line]
    assert len(reports) == 1 and "is below the regular file" in reports[0]
    assert "Querying GPUs" in proc.stderr   # the log goes on, on stderr


def test_an_unusable_glog_log_dir_is_reported_once_and_the_command_goes_on(tmp_path):
    env = dict(os.environ, GLOG_log_dir="/proc/no-such-folder/logs")
    proc = subprocess.run([CAFFE, "device_query"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert sum("COULD NOT CREATE LOGFILE" in line for line in proc.stderr.splitlines()) == 1


class _FullFile:
    """A log file on a disk that fills after ``room`` writes (later writes: ENOSPC)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, text):
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return self.f.write(text)

    def close(self):
        self.f.close()


def _filling_open(room):
    def fake(path, *args, **kwargs):
        return _FullFile(open(path, *args, **kwargs), room)
    return fake


def test_a_log_that_fills_the_disk_mid_training_is_dropped_and_training_snapshots(tiny, tmp_path, monkeypatch,
                                                                                  capsys):
    from caffe.solvers import solver as solver_module
    monkeypatch.setattr(solver_module, "open", _filling_open(5), raising=False)
    log_dir = tmp_path / "log"
    s = solver(tiny, tmp_path / "solver.prototxt", PREFIX=tmp_path / "snap" / "t")
    assert tool.main(["train", f"--solver={s}", f"--log_dir={log_dir}"]) == 0
    err = capsys.readouterr().err
    assert err.count("Could not write the log file") == 1 and "no space left on device" in err
    assert "Optimization Done." in err   # the lines go on on stderr
    assert sorted(p.name for p in (tmp_path / "snap").iterdir()) == \
        ["t_iter_2.caffemodel", "t_iter_2.solverstate", "t_iter_4.caffemodel", "t_iter_4.solverstate"]
    logs = [p for p in log_dir.iterdir() if p.name != "caffe.INFO"]
    assert len(logs) == 1 and logs[0].stat().st_size > 0   # what reached it stays


def test_a_log_the_disk_has_no_room_for_leaves_nothing_empty(tmp_path, monkeypatch, capsys):
    from caffe.solvers import solver as solver_module
    monkeypatch.setattr(solver_module, "open", _filling_open(0), raising=False)
    assert tool.main(["device_query", f"--log_dir={tmp_path / 'log'}"]) == 0
    assert capsys.readouterr().err.count("Could not write the log file") == 1
    assert list((tmp_path / "log").iterdir()) == []   # neither the empty file nor its caffe.INFO link


# ------------------------------------------------------------------ 11: HDF5 snapshots
def test_snapshot_format_hdf5_writes_h5_files_and_resumes_from_them(tiny, tmp_path):
    import h5py
    from caffe.util.hdf5 import load_hdf5
    binary = solver(tiny, tmp_path / "b.prototxt", PREFIX=tmp_path / "b" / "t")
    hdf5 = solver(tiny, tmp_path / "h.prototxt", "snapshot_format: HDF5\n", PREFIX=tmp_path / "h" / "t")
    assert tool.main(["train", f"--solver={binary}"]) == 0
    assert tool.main(["train", f"--solver={hdf5}"]) == 0
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == \
        ["t_iter_2.caffemodel.h5", "t_iter_2.solverstate.h5", "t_iter_4.caffemodel.h5", "t_iter_4.solverstate.h5"]
    with h5py.File(tmp_path / "h" / "t_iter_2.solverstate.h5", "r") as f:   # BVLC's layout
        assert int(f["iter"][()]) == 2 and int(f["current_step"][()]) == 0
        assert f["learned_net"][()].decode() == str(tmp_path / "h" / "t_iter_2.caffemodel.h5")
        assert sorted(f["history"]) == [str(i) for i in range(len(f["history"]))]
    ref = weights(tmp_path / "b" / "t_iter_4.caffemodel")
    got = {(lb.name, i): b for lb in load_hdf5(tmp_path / "h" / "t_iter_4.caffemodel.h5")
           for i, b in enumerate(lb.blobs)}
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
    # resume from iteration 2: the same weights at 4 as the uninterrupted run
    (tmp_path / "h" / "t_iter_4.caffemodel.h5").unlink()
    assert tool.main(["train", f"--solver={hdf5}", f"--snapshot={tmp_path / 'h' / 't_iter_2.solverstate.h5'}"]) == 0
    again = {(lb.name, i): b for lb in load_hdf5(tmp_path / "h" / "t_iter_4.caffemodel.h5")
             for i, b in enumerate(lb.blobs)}
    for k in ref:
        np.testing.assert_array_equal(again[k], ref[k])


# ------------------------------------------------------------------ 12: linear construction
def test_net_construction_looks_at_each_layer_a_bounded_number_of_times(monkeypatch):
    """Counted, not timed: the reads of layers' learnable blobs while building grow linearly
    with the layers (a scan of every layer per learnable blob made them quadratic)."""
    from bench.bench_build import chain
    from caffe.layer import Layer
    reads = []
    real = torch.nn.Module.__getattr__

    def counting(self, name):
        if name == "blobs":
            reads.append(1)
        return real(self, name)

    monkeypatch.setattr(Layer, "__getattr__", counting)
    counts = []
    for n in (200, 400):
        reads.clear()
        Net(chain(n), "TRAIN")
        counts.append(len(reads))
    assert counts[1] <= 2.2 * counts[0], counts


# ------------------------------------------------------------------ 14: the caffe command
def test_int32_flags_refuse_values_gflags_refuses():
    for value in ("99999999999", "2147483648", "-2147483649"):
        with pytest.raises(CaffeError, match=f"illegal value '{value}' specified for int32 flag 'iterations'"):
            tool.parse_flags([f"--iterations={value}"])
    assert tool.parse_flags(["--iterations=2147483647"])[1]["iterations"] == 2147483647


@pytest.mark.parametrize("field", ["base_lr: nan", "base_lr: inf", "momentum: nan", "weight_decay: -inf",
                                   "gamma: nan"])
def test_a_non_finite_solver_field_is_blamed_on_the_field(tiny, tmp_path, field):
    s = solver(tiny, tmp_path / "s.prototxt")
    name = field.split(":")[0]
    s.write_text("\n".join(line for line in s.read_text().splitlines() if not line.startswith(name + ":"))
                 + f"\n{field}\n")
    with pytest.raises(CaffeError, match=f"solver: {name} is -?(nan|inf); it must be a finite number"):
        tool.main(["train", f"--solver={s}"])
    assert not (tmp_path / "snap").exists()


# ------------------------------------------------------------------ 15: process-group teardown
def test_the_process_group_is_left_the_same_way_on_every_exit_path(tmp_path, monkeypatch):
    """A real (one-process) gloo group: after success a barrier, then destroy; after a failure
    destroy without a barrier; a DistributedDataParallel wrapper is released first."""
    import weakref
    import torch.distributed as dist
    from caffe.solvers import parallel
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1) or real_barrier(*a, **k))
    for success in (True, False):
        barriers.clear()
        store = f"file://{tmp_path / f'store{success}'}"
        dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
        parallel.cleanup(success)
        assert not dist.is_initialized() and len(barriers) == int(success)
    parallel.cleanup(True)   # nothing to leave: a no-op

    from caffe.solvers.solver import Solver
    net = Net(INPUT + 'layer { name: "s" type: "Scale" bottom: "data" top: "y" }\n'
              'layer { name: "l" type: "Reduction" bottom: "y" top: "loss" loss_weight: 1 }\n', "TRAIN")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        from caffe.proto import caffe_pb2 as pb
        param = pb.SolverParameter(base_lr=0.1, max_iter=1, lr_policy="fixed")
        s = Solver(param, net, lambda i: {"data": torch.ones(1, 3, 8, 8)})
        s.model = s._distributed(net)
        wrapper = weakref.ref(s.model)
        s.release()
        assert s.model is net and wrapper() is None
    finally:
        parallel.cleanup(False)


def test_train_releases_the_wrapper_before_leaving_the_group(tiny, tmp_path, monkeypatch):
    from caffe.solvers import parallel
    from caffe.solvers.solver import Solver
    events = []
    real_release = Solver.release
    monkeypatch.setattr(Solver, "release", lambda self: events.append("release") or real_release(self))
    monkeypatch.setattr(parallel, "cleanup", lambda success=True: events.append(("cleanup", success)))
    s = solver(tiny, tmp_path / "s.prototxt")
    assert tool.main(["train", f"--solver={s}"]) == 0
    assert events == ["release", ("cleanup", True)]
    events.clear()
    monkeypatch.setattr(Solver, "solve", lambda self, resume=None: (_ for _ in ()).throw(CaffeError("boom")))
    with pytest.raises(CaffeError, match="boom"):
        tool.main(["train", f"--solver={s}"])
    assert events == ["release", ("cleanup", False)]


# ------------------------------------------------------------------ the caffe command's catalogue
def _zero_model(root):
    (root / "zero.prototxt").write_text('input: "data"\ninput_shape { dim: 1 dim: -3 dim: 8 dim: 8 }\n'
                                        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    return root / "zero.prototxt"


def _axis_model(root):
    (root / "axis.prototxt").write_text(INPUT + 'layer { name: "p" type: "Softmax" bottom: "data" top: "p" '
                                                'softmax_param { axis: 5 } }\n')
    return root / "axis.prototxt"


def _nan_solver(root):
    (root / "nan.prototxt").write_text('net: "x.prototxt"\nbase_lr: nan\nmax_iter: 1\nlr_policy: "fixed"\n')
    return root / "nan.prototxt"


CATALOGUE = {
    "test/--iterations beyond int32": (lambda r: ["test", "--model=m", "--iterations=99999999999"],
                                       "illegal value '99999999999' specified for int32 flag 'iterations'"),
    "time/--level beyond int32": (lambda r: ["time", "--model=m", "--level=4294967296"],
                                  "specified for int32 flag 'level'"),
    "train/base_lr nan": (lambda r: ["train", f"--solver={_nan_solver(r)}"], "solver: base_lr is nan"),
    "time/Input dim -3": (lambda r: ["time", f"--model={_zero_model(r)}", "--iterations=1"],
                          "top 'data' would have shape 1x-3x8x8"),
    "time/Softmax axis 5": (lambda r: ["time", f"--model={_axis_model(r)}", "--iterations=1"],
                            "layer 'p' (Softmax): axis 5 out of range for a 4-D blob"),
}


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_caffe_command_bad_input_catalogue(name, tmp_path):
    argv = CATALOGUE[name][0](tmp_path)
    proc = subprocess.run([CAFFE, *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert err[-1].startswith("error: ") and CATALOGUE[name][1] in err[-1], proc.stderr
