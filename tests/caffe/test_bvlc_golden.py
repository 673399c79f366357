"""Every layer and solver type against BVLC Caffe's own outputs (tests/fixtures/golden/bvlc).

The fixtures were made by tools/make_bvlc_golden.py running tests/caffe/golden_cases.py under BVLC
Caffe's pycaffe; here the same code runs on this project's ``caffe`` and every array must agree
to float32 round-off.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import caffe
from caffe.model_io import load_caffemodel, load_solverstate
from conftest import FIXTURES
from golden_cases import DATA_DIR, LAYER_CASES, SOLVER_CASES, run_layer_case, run_solver_case

GOLDEN = FIXTURES / "golden" / "bvlc"
CASES = {case.name: case for case in LAYER_CASES if not case.refused}
REFUSED = {case.name: case for case in LAYER_CASES if case.refused}


def assert_close(ours, ref, what, rtol=1e-5):
    """Equal to float32 round-off relative to the array's scale."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs Caffe's {ref.shape}"
    tol = rtol * max(float(np.abs(ref).max(initial=0)), 1e-3)
    err = float(np.abs(ours.astype(np.float64) - ref).max(initial=0))
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


def test_every_case_has_its_fixture_and_every_bvlc_type_is_covered():
    made = {p.stem for p in (GOLDEN / "layers").glob("*.npz")}
    assert made == set(CASES)
    assert (GOLDEN / "refused.txt").read_text().split() == list(REFUSED)
    types = {case.body.split('"')[1] for case in CASES.values()}
    bvlc = {"AbsVal", "Accuracy", "ArgMax", "BatchNorm", "BatchReindex", "Bias", "BNLL", "Clip", "Concat",
            "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU",
            "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output",
            "HingeLoss", "Im2col", "ImageData", "InfogainLoss", "InnerProduct", "Log", "LRN", "LSTM",
            "LSTMUnit", "MemoryData", "MultinomialLogisticLoss", "MVN", "Parameter", "Pooling", "Power",
            "PReLU", "Reduction", "ReLU", "Reshape", "RNN", "Scale", "SigmoidCrossEntropyLoss", "Sigmoid",
            "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split", "SPP", "Swish", "TanH", "Threshold",
            "Tile", "WindowData"}
    # Input is every case's feeder; Python layers are BVLC's python/caffe/test/test_python_layer.py.
    assert bvlc <= types, sorted(bvlc - types)


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_matches_bvlc_caffe(name, tmp_path):
    ref = np.load(GOLDEN / "layers" / f"{name}.npz")
    case = CASES[name]
    if case.files:
        shutil.copytree(GOLDEN / DATA_DIR, tmp_path / case.files)
    ours = run_layer_case(caffe, case, str(tmp_path), given=ref)
    assert str(ours.pop("prototxt")) == str(ref["prototxt"])
    assert sorted(ours) == sorted(k for k in ref.files if k != "prototxt")
    for key in sorted(ours):
        if key.startswith(("input/", "topdiff/", "memory/")):   # what the case fed: the same numpy draws
            np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
        else:
            assert_close(ours[key], ref[key], f"{name}: {key}", rtol=1e-4 if key.startswith(("diff/", "paramdiff/")) else 1e-5)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_bvlc_caffe_refuses_is_refused(name, tmp_path):
    """BVLC Caffe aborted on these nets (a failed CHECK, listed by the generator in refused.txt)."""
    with pytest.raises(caffe.CaffeError, match=REFUSED[name].refused):
        run_layer_case(caffe, REFUSED[name], str(tmp_path))


@pytest.mark.parametrize("name", sorted(SOLVER_CASES))
def test_solver_matches_bvlc_caffe(name, tmp_path):
    """Seven iterations (iter_size 2) of each update rule: losses, weights after each iteration,
    and the snapshot's weights and history blobs (Caffe's order and layout)."""
    ref_dir = GOLDEN / "solvers" / name
    shutil.copy(ref_dir / "init.caffemodel", tmp_path / "init.caffemodel")
    ref = np.load(ref_dir / "trajectory.npz")
    ours = run_solver_case(caffe, name, str(tmp_path), init=str(tmp_path / "init.caffemodel"))
    assert sorted(ours) == sorted(ref.files)
    # float32 round-off relative to the blob's scale over the run (an update can cancel a value)
    scale = {}
    for key in ref.files:
        family = key.split("_after_")[0]
        scale[family] = max(scale.get(family, 0.0), float(np.abs(ref[key]).max()))
    for key in sorted(ours, key=lambda k: (k.rsplit("iter", 1)[-1], k)):
        err = float(np.abs(ours[key] - ref[key]).max())
        assert err <= 1e-5 * max(scale[key.split("_after_")[0]], 1e-3), f"{name}: {key}: max |diff| {err:.3g}"
    weights = {layer.name: layer.blobs for layer in load_caffemodel(tmp_path / "snap_iter_7.caffemodel")}
    for layer in load_caffemodel(ref_dir / "snap_iter_7.caffemodel"):
        for i, blob in enumerate(layer.blobs):
            assert_close(weights[layer.name][i], blob, f"{name}: snapshot {layer.name} blob {i}")
    state, ref_state = load_solverstate(tmp_path / "snap_iter_7.solverstate"), load_solverstate(ref_dir / "snap_iter_7.solverstate")
    assert (state.iter, state.current_step, len(state.history)) == (ref_state.iter, ref_state.current_step, len(ref_state.history))
    for i, (h, ref_h) in enumerate(zip(state.history, ref_state.history)):
        assert_close(h, ref_h, f"{name}: history blob {i}")
