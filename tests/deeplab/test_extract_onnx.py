"""deeplab-extract --backend onnxruntime: the exported net gives the engine's scores.

Uses test_extract.py's tiny test net, images (canvases of three sizes) and weights. The
scores and .mat maps must equal the engine backend's to float32 round-off; the export is
made once per net and weights (a second ScoreNet finds it in the cache); provenance
records the backend, so switching backends redoes the outputs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from deeplab import DeepLabError
from deeplab.extract.scorenet import ScoreNet
from test_extract import IMAGES, PROTOTXT, data, mapping, run  # noqa: F401  (data: the fixture)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def test_npy_and_mat_equal_the_engine(data, tmp_path):  # noqa: F811
    cache = str(tmp_path / "cache")
    for fmt in ("npy", "mat"):
        engine, onnx = tmp_path / f"engine-{fmt}", tmp_path / f"onnx-{fmt}"
        assert run(data, engine, "--format", fmt, "--dtype", "float32", "--batch", "2") == 0
        assert run(data, onnx, "--format", fmt, "--dtype", "float32", "--batch", "2",
                   "--backend", "onnxruntime", "--onnx-cache", cache) == 0
        for ident in IMAGES:
            if fmt == "npy":
                a, b = np.load(engine / f"{ident}.npy"), np.load(onnx / f"{ident}.npy")
                assert json.loads((onnx / f"{ident}.json").read_text()) == \
                    json.loads((engine / f"{ident}.json").read_text())
            else:
                a = scipy.io.loadmat(engine / f"{ident}_blob_0.mat")["data"]
                b = scipy.io.loadmat(onnx / f"{ident}_blob_0.mat")["data"]
            assert a.shape == b.shape and b.dtype == np.float32
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_exported_once_per_net_and_weights(data, tmp_path):  # noqa: F811
    _, weights = data
    cache = str(tmp_path / "cache")
    first = ScoreNet(PROTOTXT, weights, mapping=mapping(), backend="onnxruntime", onnx_cache=cache)
    again = ScoreNet(PROTOTXT, weights, mapping=mapping(), backend="onnxruntime", onnx_cache=cache)
    assert len(first.onnx.exported) == 1 and again.onnx.exported == []
    other = ScoreNet(PROTOTXT, weights, mapping=mapping(), backend="onnxruntime", onnx_cache=cache, want_mat=True,
                     blob="fc6")
    assert len(other.onnx.exported) == 1 and other.onnx.key != first.onnx.key
    x = np.random.default_rng(0).normal(0, 50, (1, 33, 33, 3)).astype(np.float32)
    scores, _ = first.forward(x)
    want, _ = ScoreNet(PROTOTXT, weights, mapping=mapping()).forward(x)
    np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_provenance_records_the_backend(data, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    cache = str(tmp_path / "cache")
    assert run(data, out, "--backend", "onnxruntime", "--onnx-cache", cache) == 0
    assert json.loads((out / ".provenance.json").read_text())["inputs"]["backend"] == "onnxruntime"
    capsys.readouterr()
    assert run(data, out) == 0                         # the engine: made from other inputs, redone
    assert "4 written, 0 already done" in capsys.readouterr().err


def test_gpu_and_amp_are_refused(data):  # noqa: F811
    _, weights = data
    with pytest.raises(DeepLabError, match="float32 on the CPU"):
        ScoreNet(PROTOTXT, weights, mapping=mapping(), backend="onnxruntime", amp="bf16")
