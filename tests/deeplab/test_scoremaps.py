"""Score map files: Interp-aligned upsampling, the .npy + sidecar format, the MAT_WRITE layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from deeplab import USER_ERRORS
from deeplab.extract.scoremaps import (load_scores, read_mat_scores, rows_needed, save_mat_scores, save_scores,
                               upsample_scores, zoomed_size)


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
    with pytest.raises(USER_ERRORS, match="covers 9x9"):
        upsample_scores(np.zeros((1, 2, 2), np.float32), 8, 10, 9)


def test_upsample_with_offset_hand_values():
    # Pixel y samples source coordinate (y + offset) / zoom: the ramp 4i + 2j moves by one pixel.
    s = np.array([[[0.0, 8.0], [16.0, 24.0]]], np.float32)
    i, j = np.mgrid[0:4, 0:4]
    np.testing.assert_allclose(upsample_scores(s, 4, 4, 4, offset=1)[0], 4 * (i + 1) + 2 * (j + 1), atol=1e-6)
    # DeepLab's 514 alignment (zoom 8, offset 7): pixel 0 is 7/8 of the way to sample 1, pixel 1 is on it.
    tent = np.array([[[0, 8, 0], [0, 8, 0]]], np.float32)  # the offset crops rows too: 2 rows cover 2 pixels
    np.testing.assert_allclose(upsample_scores(tent, 8, 2, 10, offset=7)[0],
                               [[7, 8, 7, 6, 5, 4, 3, 2, 1, 0]] * 2, atol=1e-6)
    corner = np.array([[[0, 0], [0, 16]]], np.float32)  # bilinear in both directions at once
    out = upsample_scores(corner, 8, 2, 2, offset=7)[0]
    np.testing.assert_allclose(out, [[16 * 7 / 8 * 7 / 8, 16 * 7 / 8], [16 * 7 / 8, 16]], atol=1e-6)


def test_upsample_offset_is_zoom_then_drop_rows():
    rng = np.random.default_rng(2)
    s = rng.normal(size=(2, 5, 6)).astype(np.float32)
    full = upsample_scores(s, 8, zoomed_size(5, 8), zoomed_size(6, 8))  # the whole Interp output, 33 x 41
    for offset, h, w in ((7, 26, 34), (3, 30, 38), (0, 33, 41), (9, 20, 25)):
        np.testing.assert_allclose(upsample_scores(s, 8, h, w, offset), full[:, offset:offset + h, offset:offset + w],
                                   atol=1e-6)


def test_rows_needed_is_the_fewest_that_cover():
    assert rows_needed(500, 8, 7) == 65 and rows_needed(500, 8) == 64 and rows_needed(514, 8, 7) == 66
    for zoom in (1, 4, 8):
        for offset in range(0, 2 * zoom):
            for size in range(1, 40):
                r = rows_needed(size, zoom, offset)
                assert zoomed_size(r, zoom) >= size + offset > zoomed_size(r - 1, zoom) or r == 1


def test_upsample_offset_must_leave_the_image_covered():
    s = np.zeros((1, 2, 2), np.float32)  # covers 9 x 9 pixels
    assert upsample_scores(s, 8, 2, 2, offset=7).shape == (1, 2, 2)
    with pytest.raises(USER_ERRORS, match=r"covers 9x9 pixels less the first 7 rows and columns, not the "
                                           r"image's 3x2 \(it needs 3x2 rows and columns\)"):
        upsample_scores(s, 8, 3, 2, offset=7)
    with pytest.raises(USER_ERRORS, match="offset must be >= 0"):
        upsample_scores(s, 8, 2, 2, offset=-1)


def test_npy_with_offset_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    h, w = 60, 75  # rows needed at offset 7: ceil(66 / 8) + 1 = 10, ceil(81 / 8) + 1 = 12
    raw = rng.normal(size=(2, 10, 12)).astype(np.float32)
    path = tmp_path / "o.npy"
    save_scores(path, raw, h, w, offset=7, dtype="float32")
    assert json.loads((tmp_path / "o.json").read_text()) == {"height": h, "width": w, "zoom": 8, "classes": 2,
                                                             "offset": 7}
    sm = load_scores(path, image_hw=(h, w))
    assert sm.scores.shape == (2, h, w)
    np.testing.assert_allclose(sm.scores, upsample_scores(raw, 8, h, w, offset=7))
    # sample r sits on pixel 8r - 7
    np.testing.assert_allclose(sm.scores[:, 1::8, 1::8], raw[:, 1:9, 1:11], atol=1e-6)
    assert not np.allclose(sm.scores, upsample_scores(raw, 8, h, w))
    with pytest.raises(USER_ERRORS, match=r"p.npy: scores 9x12 at zoom 8, offset 7 do not cover the image's "
                                           r"60x75 \(it needs 10x12\)"):
        save_scores(tmp_path / "p.npy", raw[:, :9], h, w, offset=7)
    save_scores(tmp_path / "q.npy", raw[:, :9], h, w)  # 9 rows do cover 60 pixels without the offset


def test_sidecar_offset_default_and_errors(tmp_path):
    raw = np.arange(2 * 9 * 11, dtype=np.float32).reshape(2, 9, 11)
    np.save(tmp_path / "old.npy", raw)  # a sidecar from before the offset key existed
    (tmp_path / "old.json").write_text(json.dumps({"height": 60, "width": 80, "zoom": 8, "classes": 2}))
    np.testing.assert_array_equal(load_scores(tmp_path / "old.npy").scores, upsample_scores(raw, 8, 60, 80))
    for bad, message in (({"offset": -7}, "offset >= 0"), ({"offset": "seven"}, "optional offset"),
                         ({"offset": 7}, r"covers 65x81 pixels less the first 7 rows")):
        np.save(tmp_path / "bad.npy", raw)
        (tmp_path / "bad.json").write_text(json.dumps({"height": 60, "width": 80, "zoom": 8, "classes": 2, **bad}))
        with pytest.raises(USER_ERRORS, match=f"bad.(json|npy).*{message}"):
            load_scores(tmp_path / "bad.npy")


def test_npy_round_trip_with_sidecar(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(3, 9, 11)).astype(np.float32)
    path = tmp_path / "img_1.npy"
    save_scores(path, raw, height=60, width=80)
    meta = json.loads((tmp_path / "img_1.json").read_text())
    assert meta == {"height": 60, "width": 80, "zoom": 8, "classes": 3, "offset": 0}
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
    with pytest.raises(USER_ERRORS, match="60x80 image, but the image is 61x80"):
        load_scores(path, image_hw=(61, 80))
    with pytest.raises(USER_ERRORS, match="do not cover"):
        save_scores(tmp_path / "b.npy", np.zeros((2, 7, 11), np.float32), 60, 80)
    (tmp_path / "c.npy").write_bytes(b"not numpy")
    (tmp_path / "c.json").write_text(json.dumps({"height": 60, "width": 80, "zoom": 8, "classes": 2}))
    with pytest.raises(USER_ERRORS, match="c.npy"):
        load_scores(tmp_path / "c.npy")
    np.save(tmp_path / "d.npy", np.zeros((2, 9, 11), np.float32))
    with pytest.raises(USER_ERRORS, match="d.json not found"):
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
    with pytest.raises(USER_ERRORS, match="image size is needed"):
        load_scores(path)
    with pytest.raises(USER_ERRORS, match="smaller than the 17x13 image"):
        load_scores(path, image_hw=(17, 13))
    scipy.io.savemat(tmp_path / "z.mat", {"scores": padded})
    with pytest.raises(USER_ERRORS, match="no variable 'data'"):
        load_scores(tmp_path / "z.mat", image_hw=(10, 13))
