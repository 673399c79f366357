"""densecrf: parity with a direct pydensecrf2 call, the snapping case, the API, and the batch command."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.special
from PIL import Image

import densecrf

# a project dependency; the GPU image (tools/gpu_check.sh collects every test module) lacks it
dcrf = pytest.importorskip("pydensecrf.densecrf")
from conftest import REPO, shared_path
from deeplab import USER_ERRORS, DeepLabError
from deeplab.labels import read_label, voc_palette
from deeplab.extract.scoremaps import save_mat_scores, save_scores, upsample_scores
from densecrf import CRFParams
from deeplab.provenance import JOURNAL, RECORD
from deeplab.commands.densecrf import main


def smooth_scores(label: np.ndarray, classes: int, seed: int = 0, zoom: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Stride-8 scores that look like a net's: the label, downsampled, blurred, noisy; and their upsampling."""
    h, w = label.shape
    sh, sw = (h - 1) // zoom + 2, (w - 1) // zoom + 2
    small = cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST)
    rng = np.random.default_rng(seed)
    raw = np.stack([(small == c) * 4.0 for c in range(classes)]).astype(np.float32)
    raw = cv2.GaussianBlur(raw.transpose(1, 2, 0), (0, 0), 1.0).reshape(sh, sw, classes).transpose(2, 0, 1)
    raw = raw + rng.normal(0, 0.8, raw.shape).astype(np.float32)
    return raw, upsample_scores(raw, zoom, h, w)


def direct_pydensecrf(rgb, scores, p: CRFParams, norm):
    """What a user of pydensecrf2 writes by hand."""
    c, h, w = scores.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-scipy.special.log_softmax(scores, axis=0).reshape(c, -1), np.float32))
    d.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w, normalization=norm)
    d.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=rgb, compat=p.bi_w, normalization=norm)
    return np.array(d.inference(p.iters)).reshape(c, h, w)


@pytest.fixture(scope="module")
def camvid():
    """A real CamVid image (RGB, 360x480) with net-like scores made from its ground truth."""
    image_id = "0001TP_006690"
    root = shared_path("data", "camvid")
    rgb = np.ascontiguousarray(cv2.imread(str(root / "images" / f"{image_id}.png"))[:, :, ::-1])
    label = read_label(root / "labels" / f"{image_id}.png")
    label[label > 10] = 0
    _, full = smooth_scores(label, 11)
    return rgb, full


def test_parity_with_direct_pydensecrf_call(camvid):
    rgb, scores = camvid
    p = CRFParams()
    labels, prob = densecrf.refine(rgb, scores, p, return_prob=True)
    ref = direct_pydensecrf(rgb, scores, p, dcrf.NORMALIZE_AFTER)
    np.testing.assert_array_equal(labels, ref.argmax(0))
    np.testing.assert_allclose(prob, ref, atol=1e-6)
    assert (labels != scores.argmax(0)).mean() > 0.005  # the CRF did change labels


def test_normalization_option_matches_symmetric(camvid):
    rgb, scores = camvid
    p = CRFParams(normalization="symmetric")
    sym = densecrf.refine(rgb, scores, p)
    np.testing.assert_array_equal(sym, direct_pydensecrf(rgb, scores, p, dcrf.NORMALIZE_SYMMETRIC).argmax(0))
    assert (sym != densecrf.refine(rgb, scores)).any()  # the default ("after") really is a different model


def test_two_regions_snap_to_colour_edge():
    h, w, edge = 60, 80, 40
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, :edge] = (200, 40, 40)
    rgb[:, edge:] = (40, 90, 200)
    x = np.arange(w)
    ramp = 2.0 * np.tanh((x - 47.5) / 6.0)  # the coarse boundary, 8 pixels right of the edge
    scores = np.stack([-ramp, ramp])[:, None, :].repeat(h, axis=1).astype(np.float32)
    before = scores.argmax(0)
    assert (before[:, :48] == 0).all() and (before[:, 48:] == 1).all()
    after = densecrf.refine(rgb, scores)
    # Now the boundary is at the colour edge (within one pixel: the spatial kernel still sees
    # the red side's labels there); before it was 8 pixels off.
    assert (after[:, :edge] == 0).all()
    assert (after[:, edge + 1:] == 1).all()


def test_unary_is_negative_log_softmax():
    s = np.random.default_rng(3).normal(size=(4, 5, 6)).astype(np.float32) * 10
    u = densecrf.unary_from_scores(s)
    np.testing.assert_allclose(u, -scipy.special.log_softmax(s, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(densecrf.unary_from_scores(s + 100), u, atol=1e-4)


def test_mean_field_steps(camvid):
    rgb, scores = camvid
    rgb, scores = rgb[:60, :80].copy(), scores[:, :60, :80].copy()
    p = CRFParams(iters=3)
    steps = densecrf.mean_field_steps(rgb, scores, p)
    assert len(steps) == 4 and all(q.shape == scores.shape for q in steps)
    np.testing.assert_allclose(steps[0], scipy.special.softmax(scores, axis=0), atol=1e-5)
    np.testing.assert_allclose(steps[-1], densecrf.refine(rgb, scores, p, return_prob=True)[1], atol=1e-6)
    assert not np.allclose(steps[1], steps[0], atol=1e-3)


def test_params_paper_names_and_validation():
    p = CRFParams.from_paper(w1=5, sigma_alpha=50, sigma_beta=3, w2=3, sigma_gamma=3)
    assert (p.bi_w, p.bi_xy_std, p.bi_rgb_std, p.pos_w, p.pos_xy_std, p.iters) == (5, 50, 3, 3, 3, 10)
    assert CRFParams.from_dict({**p.to_dict(), "mean_iou": 0.7}) == p
    d = CRFParams()
    assert (d.iters, d.bi_w, d.bi_xy_std, d.bi_rgb_std, d.pos_w, d.pos_xy_std, d.normalization) == \
        (10, 4, 49, 5, 3, 3, "after")
    for bad in ({"bi_xy_std": 0}, {"iters": -1}, {"normalization": "before"}, {"pos_w": -1}):
        with pytest.raises(USER_ERRORS):
            CRFParams(**bad)


def test_backend_registry_and_input_checks():
    calls = []

    class Fake:
        def marginals(self, image, unary, params):
            calls.append((image.shape, unary.shape, params.iters))
            q = np.zeros(unary.shape, np.float32)
            q[2] = 1
            return q

    densecrf.BACKENDS["fake"] = Fake()
    try:
        out = densecrf.refine(np.zeros((4, 5, 3), np.uint8), np.zeros((3, 4, 5), np.float32), backend="fake")
    finally:
        del densecrf.BACKENDS["fake"]
    assert calls == [((4, 5, 3), (3, 4, 5), 10)] and (out == 2).all()
    with pytest.raises(USER_ERRORS, match="unknown CRF backend"):
        densecrf.refine(np.zeros((4, 5, 3), np.uint8), np.zeros((3, 4, 5), np.float32), backend="nope")
    with pytest.raises(USER_ERRORS, match="scores are 4x6 but the image is 4x5"):
        densecrf.refine(np.zeros((4, 5, 3), np.uint8), np.zeros((3, 4, 6), np.float32))


# ---- the batch command -------------------------------------------------------------------

def make_set(root, ids, h=60, w=80, classes=3):
    """Images (PNG and JPEG), stride-8 .npy scores and their labels; returns {id: (rgb, full scores)}."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir()
    (root / "scores").mkdir()
    out = {}
    for k, image_id in enumerate(ids):
        label = np.zeros((h, w), np.uint8)
        label[:, w // 3:] = 1
        label[h // 2:, 2 * w // 3:] = 2
        rgb = (voc_palette()[label + 1].astype(int) + rng.integers(-20, 21, (h, w, 3))).clip(0, 255).astype(np.uint8)
        if k % 2:
            Image.fromarray(rgb).save(root / "images" / f"{image_id}.jpg", quality=95)
            rgb = np.ascontiguousarray(cv2.imread(str(root / "images" / f"{image_id}.jpg"))[:, :, ::-1])
        else:
            Image.fromarray(rgb).save(root / "images" / f"{image_id}.png")
        raw, full = smooth_scores(np.roll(label, 5, axis=1), classes, seed=k)
        save_scores(root / "scores" / f"{image_id}.npy", raw, h, w)
        out[image_id] = (rgb, upsample_scores(np.load(root / "scores" / f"{image_id}.npy"), 8, h, w))
    return out


def argv(root, *extra):
    return ["--images", str(root / "images"), "--scores", str(root / "scores"), "--list", str(root / "list.txt"),
            "--out", str(root / "out"), "-j", "1", "--quiet", *extra]


def test_batch_outputs_match_refine_on_rgb(tmp_path):
    data = make_set(tmp_path, ["a", "b"])
    (tmp_path / "list.txt").write_text("/JPEGImages/a.jpg /SegmentationClassAug/a.png\nb\n")
    assert main(argv(tmp_path, "--save-prob")) == 0
    for image_id, (rgb, scores) in data.items():
        labels, prob = densecrf.refine(rgb, scores, return_prob=True)
        np.testing.assert_array_equal(read_label(tmp_path / "out" / f"{image_id}.png"), labels)
        with Image.open(tmp_path / "out" / f"{image_id}.png") as im:
            assert im.mode == "P" and im.getpalette()[:6] == voc_palette()[:2].ravel().tolist()
        saved = np.load(tmp_path / "out" / f"{image_id}.npy")
        np.testing.assert_allclose(saved, prob, atol=1e-6)
        # The bilateral kernel got RGB: BGR would give measurably different marginals.
        bgr_prob = densecrf.refine(np.ascontiguousarray(rgb[:, :, ::-1]), scores, return_prob=True)[1]
        assert np.abs(bgr_prob - saved).max() > 1e-4


def test_batch_mat_input_equals_npy_input(tmp_path):
    data = make_set(tmp_path, ["m"])
    rgb, full = data["m"]
    padded = np.zeros((3, 64, 96), np.float32)
    padded[:, :60, :80] = full
    padded[:, 60:, :] = 50  # padding region must be cropped away
    os.unlink(tmp_path / "scores" / "m.npy")
    save_mat_scores(tmp_path / "scores" / "m_blob_0.mat", padded)
    (tmp_path / "list.txt").write_text("m\n")
    with pytest.raises(DeepLabError, match="m_blob_0.mat has 3 classes, the class list camvid has 11"):
        main(argv(tmp_path, "--classes", "camvid"))  # refused before any work, naming the map
    assert main(argv(tmp_path)) == 0
    np.testing.assert_array_equal(read_label(tmp_path / "out" / "m.png"), densecrf.refine(rgb, full))


def listed(folder) -> list[str]:
    """The outputs in a folder, without its provenance records."""
    return sorted(f for f in os.listdir(folder) if f not in (RECORD, JOURNAL))


def test_batch_failures_resume_force_and_shards(tmp_path, capsys):
    make_set(tmp_path, ["a", "b", "c", "d"])
    os.unlink(tmp_path / "scores" / "b.npy")
    (tmp_path / "scores" / "c.npy").write_bytes(b"garbage")
    (tmp_path / "list.txt").write_text("a\nb\nc\nd\n")
    assert main(argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "2 image(s) failed" in err and "  b: no score map b.npy" in err and "  c: cannot read score file" in err
    assert listed(tmp_path / "out") == ["a.png", "d.png"]

    stamp = os.stat(tmp_path / "out" / "a.png").st_mtime_ns
    (tmp_path / "list.txt").write_text("a\nd\n")
    assert main(argv(tmp_path)) == 0
    assert "0 refined, 2 already done" in capsys.readouterr().out
    assert os.stat(tmp_path / "out" / "a.png").st_mtime_ns == stamp
    assert main(argv(tmp_path, "--force")) == 0
    assert "2 refined, 0 already done" in capsys.readouterr().out

    (tmp_path / "list.txt").write_text("a\nb\nc\nd\n")
    for name in ("a", "d"):
        os.unlink(tmp_path / "out" / f"{name}.png")
    main(argv(tmp_path, "--shard", "1/2"))
    assert listed(tmp_path / "out") == ["a.png"]  # shard 1/2 holds a and c (c fails)
    assert main(argv(tmp_path, "--shard", "2/2")) == 1  # b fails
    assert listed(tmp_path / "out") == ["a.png", "d.png"]
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".") and f not in (RECORD, JOURNAL)]  # no temps


def test_cli_subprocess_parallel_and_errors(tmp_path):
    make_set(tmp_path, ["a", "b", "c"])
    (tmp_path / "list.txt").write_text("a\nb\nc\nnone\n")
    cmd = [sys.executable, "-m", "densecrf", *argv(tmp_path)]
    cmd[cmd.index("-j") + 1] = "2"
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "none: no image none.jpg or .png" in r.stderr and "Traceback" not in r.stderr
    assert listed(tmp_path / "out") == ["a.png", "b.png", "c.png"]
    bad = [sys.executable, "-m", "densecrf", *argv(tmp_path), "--bi-xy-std", "0"]
    r = subprocess.run(bad, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: bi_xy_std must be a finite number > 0, got 0.0"
    (tmp_path / "list.txt").write_text("a\na\n")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "list.txt:2: id 'a' repeats line 1" in r.stderr
