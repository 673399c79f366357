"""deeplab-train (tools/train.py) end to end on a tiny generated dataset: the loss falls, snapshots and the
Caffe-format log, exact resume, Ctrl-C, and one-line errors (exit code 2)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import FIXTURES, REPO
from deeplab.report.caffelog import parse_log
from deeplab.cli import run_main
from caffe.model_io import load_caffemodel, load_solverstate
from deeplab.commands import train
from deeplab.labels import read_label, write_label

TINY = FIXTURES / "tiny"
TRAIN_PY = REPO / "tools" / "train.py"  # the shim users know; it runs deeplab.commands.train


def make_dataset(root, n_train=8, n_val=4, sizes=((20, 24), (14, 18)), seed=0):
    """Grey images with a blue (class 1) and a green (class 2) rectangle, plus noise; some
    smaller than the crop (16) so padding is exercised. Writes train.txt and val.txt."""
    rng = np.random.default_rng(seed)
    for sub in ("img", "lab"):
        os.makedirs(root / sub, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            h, w = sizes[i % len(sizes)]
            img = np.full((h, w, 3), 128.0)
            lab = np.zeros((h, w), np.uint8)
            for cls, colour in ((1, (200, 40, 40)), (2, (40, 200, 40))):  # BGR
                y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
                hh, ww = rng.integers(4, 9, 2)
                img[y:y + hh, x:x + ww] = colour
                lab[y:y + hh, x:x + ww] = cls
            img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "img" / f"{split}{i}.png"), img)
            write_label(root / "lab" / f"{split}{i}.png", lab)
            lines.append(f"/img/{split}{i}.png /lab/{split}{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def argv(root, prefix, max_iter, snapshot=0, batch=2, dropout=0.2, extra=()):
    sets = dict(ROOT=root, NET=TINY / "train_test.prototxt", PREFIX=prefix, MAX_ITER=max_iter,
                SNAPSHOT=snapshot, BATCH=batch, DROPOUT=dropout)
    out = ["--solver", str(TINY / "solver.prototxt"), "--quiet", "--workers", "0", "--cpu"]
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out + list(extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def weights(path):
    return {(layer.name, i): b for layer in load_caffemodel(path) for i, b in enumerate(layer.blobs)}


def test_tiny_net_trains_and_its_loss_falls(data, tmp_path):
    log = tmp_path / "log" / "train.log"
    prefix = tmp_path / "snap" / "tiny"
    assert train.main(argv(data, prefix, 20, snapshot=10, batch=4, extra=["--log-file", str(log)])) == 0
    for it in (10, 20):
        assert (tmp_path / "snap" / f"tiny_iter_{it}.caffemodel").exists()
        assert load_solverstate(tmp_path / "snap" / f"tiny_iter_{it}.solverstate").iter == it
    parsed = parse_log(log)  # Caffe's log format, read by the log parser
    _, losses = parsed.series("loss")
    assert len(losses) == 5 and losses[-1] < 0.3 * losses[0]  # display 5: iterations 0, 5, ..., 20
    _, lrs = parsed.series("lr")
    assert lrs == [0.01, 0.01, 0.005, 0.005]  # step policy: gamma 0.5 every 10
    its, test_acc = parsed.series("test_accuracy")
    assert its == [0, 20] and test_acc[-1] > test_acc[0]  # test_interval 20
    text = log.read_text()
    assert "Snapshotting solver state to binary proto file" in text and "Optimization Done." in text
    # --weights copies layers by name; max_iter 0 snapshots them unchanged.
    trained = tmp_path / "snap" / "tiny_iter_20.caffemodel"
    assert train.main(argv(data, tmp_path / "ft", 0, extra=["--weights", str(trained)])) == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights(trained).values(),
                                                    weights(tmp_path / "ft_iter_0.caffemodel").values()))


def test_interrupted_and_resumed_run_ends_with_the_same_weights(data, tmp_path):
    """9 iterations straight (data in a worker process) == 4 iterations, then resumed from
    the snapshot to 9: shuffling, crops, mirrors and dropout follow (seed, iteration)."""
    assert train.main(argv(data, tmp_path / "a", 9, extra=["--workers", "1"])) == 0
    assert train.main(argv(data, tmp_path / "b", 4)) == 0
    assert train.main(argv(data, tmp_path / "b", 9, extra=["--snapshot", str(tmp_path / "b_iter_4.solverstate")])) == 0
    a, b = weights(tmp_path / "a_iter_9.caffemodel"), weights(tmp_path / "b_iter_9.caffemodel")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ha = load_solverstate(tmp_path / "a_iter_9.solverstate").history
    hb = load_solverstate(tmp_path / "b_iter_9.solverstate").history
    assert all(np.array_equal(x, y) for x, y in zip(ha, hb))


def test_ctrl_c_snapshots_then_stops(data, tmp_path):
    cmd = [sys.executable, str(TRAIN_PY)] + [a for a in argv(data, tmp_path / "s", 100000) if a != "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "Iteration 5, loss" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Optimization stopped early." in rest
    states = list(tmp_path.glob("s_iter_*.solverstate"))
    assert len(states) == 1
    it = load_solverstate(states[0]).iter
    assert it >= 5 and (tmp_path / f"s_iter_{it}.caffemodel").exists()


def run_error(args, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(train.main, args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err, err
    return err


def run_main_ok(args):
    with pytest.raises(SystemExit) as e:
        run_main(train.main, args)
    assert e.value.code == 0


def test_errors_are_one_line_with_exit_code_2(data, tmp_path, capsys):
    err = run_error(argv(tmp_path / "nothing", tmp_path / "p", 1), capsys)
    assert "list file" in err and "nothing/train.txt not found" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.txt").write_text((data / "train.txt").read_text().replace("/img/train1.png", "/img/gone.png"))
    (broken / "img").symlink_to(data / "img")
    (broken / "lab").symlink_to(data / "lab")
    err = run_error(argv(broken, tmp_path / "p", 1), capsys)
    assert "train.txt:2:" in err and "img/gone.png does not exist" in err
    solver = tmp_path / "solver.prototxt"
    solver.write_text((TINY / "solver.prototxt").read_text() + "learning_rate_boost: 2\n")
    args = argv(data, tmp_path / "p", 1)
    args[args.index("--solver") + 1] = str(solver)
    err = run_error(args, capsys)
    assert "solver.prototxt:" in err and "learning_rate_boost" in err
    err = run_error(["--solver", str(tmp_path / "missing.prototxt")], capsys)
    assert "missing.prototxt" in err
    err = run_error(argv(data, tmp_path / "p", 1, extra=["--weights", "a.caffemodel", "--snapshot", "x"]), capsys)
    assert "not both" in err


def test_bad_label_outside_the_crop_is_an_error_naming_the_file(data, tmp_path, capsys):
    """A label value that is neither a class (the net has 3) nor the ignore value stops training
    when the file is first read, naming the list line and the file, even where no crop reaches
    it (here: one pixel in a corner of a 20x24 label, crops of 16)."""
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    lab = read_label(bad / "lab" / "train0.png")
    lab[-1, -1] = 7
    write_label(bad / "lab" / "train0.png", lab)
    err = run_error(argv(bad, tmp_path / "p", 4), capsys)   # 4 x 2 samples: every file read once
    assert "train.txt:1" in err and "lab/train0.png" in err and "7" in err and "0..2" in err


def test_unusable_snapshot_folder_is_refused_before_training(data, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = run_error(argv(data, tmp_path / "afile" / "snaps" / "p", 1), capsys)
    assert "snapshot folder" in err and "afile" in err and "not a folder" in err


def test_resume_from_a_caffemodel_missing_a_layer_says_so(data, tmp_path, capsys):
    """A solverstate whose caffemodel lacks a learnable layer resumes that layer from its fillers,
    as Caffe would, but says so on the log instead of silently."""
    prefix = tmp_path / "p"
    run_main_ok(argv(data, prefix, 2, snapshot=2))
    model = Path(f"{prefix}_iter_2.caffemodel")
    from caffe.model_io import save_caffemodel
    save_caffemodel(model, [layer for layer in load_caffemodel(model) if layer.name != "fc8"])
    args = [a for a in argv(data, prefix, 3) if a != "--quiet"]
    run_main_ok(args + ["--snapshot", f"{prefix}_iter_2.solverstate"])
    err = capsys.readouterr().err
    assert "RESUMING WITH FILLER WEIGHTS" in err and "fc8" in err


def test_weights_for_another_net_warn_and_strict_refuses(data, tmp_path, capsys):
    from caffe.model_io import LayerBlobs, save_caffemodel
    other = tmp_path / "other.caffemodel"
    save_caffemodel(other, [LayerBlobs("unrelated", "Convolution", [np.zeros((1, 1, 1, 1), np.float32)])])
    args = [a for a in argv(data, tmp_path / "p", 1) if a != "--quiet"] + ["--weights", str(other)]
    run_main_ok(args)
    assert "none of the 1 layer(s)" in capsys.readouterr().err
    err = run_error(argv(data, tmp_path / "p", 1) + ["--weights", str(other), "--strict"], capsys)
    assert "none of the 1 layer(s)" in err and "other.caffemodel" in err


def test_non_finite_loss_stops_naming_the_iteration_and_blob(data, tmp_path, capsys):
    """A diverging run stops at once with the iteration and the loss blob, as Caffe's NaN loss
    would be noticed only in the log."""
    solver = tmp_path / "solver.prototxt"
    solver.write_text((TINY / "solver.prototxt").read_text().replace("base_lr:", "base_lr: 1e30 #"))
    args = argv(data, tmp_path / "p", 5)
    args[args.index("--solver") + 1] = str(solver)
    err = run_error(args, capsys)
    assert "iteration" in err and "loss" in err and "non-finite" in err


def test_kill_9_then_the_same_command_ends_as_an_uninterrupted_run(data, tmp_path):
    """kill -9 at a random moment of a run (snapshots every 2 iterations), then the same command
    again: the final snapshot equals an uninterrupted run's byte for byte, and the temporary
    files the killed run may have left are gone."""
    import random
    import time
    assert train.main(argv(data, tmp_path / "ref", 6, snapshot=2)) == 0
    cmd = [sys.executable, str(TRAIN_PY)] + argv(data, tmp_path / "run", 6, snapshot=2)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.uniform(1.0, 4.0))
    proc.kill()
    proc.wait()
    (tmp_path / ".run_iter_4.abcdefgh.tmp.caffemodel").write_bytes(b"half")  # as a kill mid-write leaves
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for ext in ("caffemodel", "solverstate"):
        ref = (tmp_path / f"ref_iter_6.{ext}").read_bytes()
        run = (tmp_path / f"run_iter_6.{ext}").read_bytes()
        if ext == "solverstate":  # it names its own caffemodel
            ref = ref.replace(b"ref_iter_6", b"run_iter_6")
        assert run == ref, ext
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


@pytest.mark.parametrize("flag, expect", [(None, "bf16"), ("fp32", None), ("none", None), ("bf16", "bf16")])
def test_amp_auto_is_the_default_and_fp32_forces_float32(data, tmp_path, monkeypatch, flag, expect):
    """Without --amp (and without DEEPLAB_AMP) the precision is measured: here a fake timer says
    bf16 is faster, so the solver autocasts to bf16 and the log says why in one line."""
    from caffe import precision
    from caffe.solvers import solver as solver_mod
    from test_precision import FakeTimer
    monkeypatch.delenv("DEEPLAB_AMP")
    monkeypatch.setattr(precision, "ConvTimer",
                        lambda: FakeTimer(fixed={"fp32": 0, "bf16": 0}, per_mac={"fp32": 2e-9, "bf16": 1e-9}))
    got = []
    real = solver_mod.Solver.__init__

    def init(self, *a, **k):
        got.append(k["amp"])
        real(self, *a, **k)
    monkeypatch.setattr(solver_mod.Solver, "__init__", init)
    log = tmp_path / "train.log"
    assert train.main(argv(data, tmp_path / "p", 1, extra=["--log-file", str(log)]
                           + (["--amp", flag] if flag else []))) == 0
    assert got == [expect]
    lines = [m for m in log.read_text().splitlines() if "precision (--amp auto)" in m]
    if flag is None:
        assert len(lines) == 1 and "bf16 autocast; largest convolution" in lines[0]
        assert "fp32 " in lines[0] and " ms, bf16 " in lines[0]
    else:
        assert lines == []
