"""Score map files: Interp-aligned upsampling, the .npy + sidecar format, the MAT_WRITE layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from deeplab import DeepLabError
from deeplab.scoremaps import (load_scores, read_mat_scores, save_mat_scores, save_scores, upsample_scores,
                               zoomed_size)


def test_zoomed_size_is_interp_rule():
    # Interp with zoom_factor: out = in + (in - 1)(zoom - 1); DeepLab's 513 crop -> 65 -> 513.
    assert zoomed_size(65, 8) == 513
    assert zoomed_size(1, 8) == 1
    assert zoomed_size(3, 4) == 9


def test_upsample_plane_hand_values():
    # A linear ramp is reproduced exactly with corners aligned: src = dst * (in-1)/(out-1) = dst/zoom.
    s = np.array([[[0.0, 8.0], [16.0, 24.0]]], np.float32)
    out = upsample_scores(s, 4, 5, 5)
    i, j = np.mgrid[0:5, 0:5]
    np.testing.assert_allclose(out[0], 4 * i + 2 * j, atol=1e-6)
    assert out[0, 0, 0] == 0 and out[0, 4, 4] == 24  # corners are the input corners
    # Cropping keeps the top-left part of the zoomed map.
    np.testing.assert_allclose(upsample_scores(s, 4, 3, 4)[0], (4 * i + 2 * j)[:3, :4], atol=1e-6)


def test_upsample_tent_and_channels():
    s = np.zeros((2, 1, 3), np.float32)
    s[0, 0] = [0, 8, 0]
    s[1, 0] = [1, 1, 1]
    out = upsample_scores(s, 8, 1, 17)
    expected = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 1, 0], np.float32)
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0)
    # zoom 2 by hand: [0, 1, 0] -> 0, .5, 1, .5, 0
    np.testing.assert_allclose(upsample_scores(np.array([[[0, 1, 0]]], np.float32), 2, 1, 5)[0, 0],
                               [0, 0.5, 1, 0.5, 0], atol=1e-7)


def test_upsample_refuses_image_larger_than_coverage():
    with pytest.raises(DeepLabError, match="covers 9x9"):
        upsample_scores(np.zeros((1, 2, 2), np.float32), 8, 10, 9)


def test_npy_round_trip_with_sidecar(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(3, 9, 11)).astype(np.float32)
    path = tmp_path / "img_1.npy"
    save_scores(path, raw, height=60, width=80)
    meta = json.loads((tmp_path / "img_1.json").read_text())
    assert meta == {"height": 60, "width": 80, "zoom": 8, "classes": 3}
    stored = np.load(path)
    assert stored.dtype == np.float16 and stored.shape == (3, 9, 11)
    sm = load_scores(path)
    assert (sm.height, sm.width, sm.classes) == (60, 80, 3)
    assert sm.scores.dtype == np.float32 and sm.scores.shape == (3, 60, 80)
    np.testing.assert_allclose(sm.scores, upsample_scores(stored, 8, 60, 80))
    # every 8th pixel is an input sample (corner alignment)
    np.testing.assert_allclose(sm.scores[:, ::8, ::8], stored[:, :8, :10].astype(np.float32), atol=1e-6)
    assert load_scores(path, image_hw=(60, 80)).scores.shape == (3, 60, 80)


def test_npy_errors_name_the_file(tmp_path):
    path = tmp_path / "a.npy"
    save_scores(path, np.zeros((2, 9, 11), np.float32), 60, 80, dtype="float32")
    with pytest.raises(DeepLabError, match="60x80 image, but the image is 61x80"):
        load_scores(path, image_hw=(61, 80))
    with pytest.raises(DeepLabError, match="do not cover"):
        save_scores(tmp_path / "b.npy", np.zeros((2, 7, 11), np.float32), 60, 80)
    (tmp_path / "c.npy").write_bytes(b"not numpy")
    (tmp_path / "c.json").write_text(json.dumps({"height": 60, "width": 80, "zoom": 8, "classes": 2}))
    with pytest.raises(DeepLabError, match="c.npy"):
        load_scores(tmp_path / "c.npy")
    np.save(tmp_path / "d.npy", np.zeros((2, 9, 11), np.float32))
    with pytest.raises(DeepLabError, match="d.json not found"):
        load_scores(tmp_path / "d.npy")


def test_mat_layout_is_matlab_column_major(tmp_path):
    blob = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # C x H x W
    path = tmp_path / "x_blob_0.mat"
    save_mat_scores(path, blob)
    data = scipy.io.loadmat(path)["data"]
    assert data.shape == (4, 3, 2, 1)  # W x H x C x N
    for c, h, w in np.ndindex(*blob.shape):
        assert data[w, h, c, 0] == blob[c, h, w]
    np.testing.assert_array_equal(read_mat_scores(path), blob)


def test_mat_crop_to_image(tmp_path):
    rng = np.random.default_rng(1)
    padded = rng.normal(size=(3, 16, 20)).astype(np.float32)  # the padded crop
    # MATLAB drops the trailing singleton N: a 3-D W x H x C variable is read too.
    path = tmp_path / "y_blob_0.mat"
    scipy.io.savemat(path, {"data": padded.transpose(2, 1, 0)})
    sm = load_scores(path, image_hw=(10, 13))
    np.testing.assert_array_equal(sm.scores, padded[:, :10, :13])
    with pytest.raises(DeepLabError, match="image size is needed"):
        load_scores(path)
    with pytest.raises(DeepLabError, match="smaller than the 17x13 image"):
        load_scores(path, image_hw=(17, 13))
    scipy.io.savemat(tmp_path / "z.mat", {"scores": padded})
    with pytest.raises(DeepLabError, match="no variable 'data'"):
        load_scores(tmp_path / "z.mat", image_hw=(10, 13))
