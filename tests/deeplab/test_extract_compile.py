"""deeplab-extract --compile: the compiled engine forward gives the engine's scores.

Uses test_extract.py's tiny test net, images (canvases of three sizes: three compiled
variants) and weights, with torch.compile's eager backend (the wiring: tests/caffe/
test_compiled.py compiles with inductor). Scores and MatWrite's maps must equal the uncompiled
run's to float32 round-off; provenance records the compile.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from caffe import compiled
from deeplab import DeepLabError
from deeplab.extract.scorenet import ScoreNet
from test_extract import PROTOTXT, data, mapping, run  # noqa: F401  (data: the fixture)


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "eager")


def test_scores_equal_the_engine(data, tmp_path, eager):  # noqa: F811
    engine, comp = tmp_path / "engine", tmp_path / "compiled"
    assert run(data, engine, "--dtype", "float32", "--shard", "1/2") == 0   # 2 images, 2 canvas sizes
    assert run(data, comp, "--dtype", "float32", "--shard", "1/2", "--compile") == 0
    assert json.loads((comp / ".provenance.json").read_text())["inputs"]["compile"] is True
    assert "compile" not in json.loads((engine / ".provenance.json").read_text())["inputs"]
    done = sorted(p.stem for p in comp.glob("*.npy"))
    assert done == sorted(p.stem for p in engine.glob("*.npy")) and len(done) == 2
    for ident in done:
        a, b = np.load(engine / f"{ident}.npy"), np.load(comp / f"{ident}.npy")
        assert a.shape == b.shape and b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


def test_mat_maps_equal_the_engine_one_variant_per_canvas_size(data, eager):  # noqa: F811
    _, weights = data
    net = ScoreNet(PROTOTXT, weights, mapping=mapping(), want_mat=True, compile=True)
    plain = ScoreNet(PROTOTXT, weights, mapping=mapping(), want_mat=True)
    rng = np.random.default_rng(0)
    for h, w in ((33, 33), (50, 37), (33, 33)):
        x = rng.normal(0, 50, (1, h, w, 3)).astype(np.float32)
        for got, want in zip(net.forward(x), plain.forward(x)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    assert len(net.net.compiled.variants) == 2


def test_amp_and_onnxruntime_are_refused(data):  # noqa: F811
    _, weights = data
    for extra in ({"amp": "bf16"}, {"backend": "onnxruntime"}):
        with pytest.raises(DeepLabError, match="--compile compiles the engine's float32 forward"):
            ScoreNet(PROTOTXT, weights, mapping=mapping(), compile=True, **extra)
