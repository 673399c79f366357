"""Issue 15 item 8: "finished" means finished from these inputs (deeplab/provenance.py).

A rerun with other weights, other CRF parameters or other score maps into the same folder
redoes it (with a note) and ends with exactly what a run into a fresh folder writes; outputs
of the old inputs are never taken as finished (other shards' ids included); score maps made
before their folder's current inputs are refused; the Makefile's stamps follow the rule.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import tinyset
from conftest import REPO
from deeplab.commands import crf_search as search_tool
from deeplab.commands import extract as extract_tool
from deeplab.provenance import RECORD, file_digest, open_output, read_record, source_identity
from deeplab.commands.densecrf import main as crf_main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tinyset.make(root)
    return root, tinyset.weights(root / "w0.caffemodel", 0), tinyset.weights(root / "w1.caffemodel", 1)


def files(folder):
    return {k: v for k, v in tinyset.outputs(folder).items()}


def test_record_rule_by_hand(tmp_path, capsys):
    a = open_output(tmp_path / "o", "stage", {"x": 1}, {"path": "p"})
    assert a.changed and read_record(tmp_path / "o") == {"stage": "stage", "inputs": {"x": 1}, "info": {"path": "p"}}
    (tmp_path / "o" / "f.png").write_bytes(b"1")
    b = open_output(tmp_path / "o", "stage", {"x": 1}, {"path": "other"})  # info is not an input
    assert not b.changed and b.since_ns == a.since_ns and b.fresh(tmp_path / "o" / "f.png")
    assert capsys.readouterr().err == ""
    a.close()
    b.close()
    c = open_output(tmp_path / "o", "stage", {"x": 2})
    assert c.changed and not c.fresh(tmp_path / "o" / "f.png")  # made from x=1: not finished
    assert "was made from other inputs (x: 1 -> 2); its outputs are redone" in capsys.readouterr().err
    assert source_identity(tmp_path / "o") != source_identity(tmp_path / "none")
    assert file_digest(tinyset.PROTOTXT) == file_digest(tinyset.PROTOTXT)


def test_extract_other_weights_redoes_the_folder(tiny, tmp_path, capsys):
    root, w0, w1 = tiny
    out, labels = tmp_path / "out", tmp_path / "dcnn"
    assert extract_tool.main(tinyset.extract_argv(root, w0, out, "--labels-out", str(labels))) == 0
    assert extract_tool.main(tinyset.extract_argv(root, w0, out, "--labels-out", str(labels))) == 0
    assert "0 written, 4 already done" in capsys.readouterr().err
    assert extract_tool.main(tinyset.extract_argv(root, w1, out, "--labels-out", str(labels))) == 0
    err = capsys.readouterr().err
    assert f"{out} was made from other inputs (weights: " in err and "4 written, 0 already done" in err
    fresh, fresh_labels = tmp_path / "fresh", tmp_path / "fresh_dcnn"
    assert extract_tool.main(tinyset.extract_argv(root, w1, fresh, "--labels-out", str(fresh_labels))) == 0
    assert files(out) == files(fresh) and files(labels) == files(fresh_labels)
    assert read_record(out)["inputs"]["weights"] == file_digest(w1)


def test_extract_shards_never_keep_old_outputs(tiny, tmp_path, capsys):
    root, w0, w1 = tiny
    out = tmp_path / "out"
    assert extract_tool.main(tinyset.extract_argv(root, w0, out)) == 0
    assert extract_tool.main(tinyset.extract_argv(root, w1, out, "--shard", "1/2")) == 0
    assert extract_tool.main(tinyset.extract_argv(root, w1, out, "--shard", "2/2")) == 0
    assert "2 written, 0 already done" in capsys.readouterr().err.splitlines()[-1]  # shard 2's old maps redone
    assert extract_tool.main(tinyset.extract_argv(root, w1, tmp_path / "fresh")) == 0
    assert files(out) == files(tmp_path / "fresh")


def test_densecrf_other_parameters_or_scores_redo(tiny, tmp_path, capsys):
    root, w0, w1 = tiny
    out = tmp_path / "crf"
    assert crf_main(tinyset.crf_argv(root, out)) == 0
    assert crf_main(tinyset.crf_argv(root, out, "--bi-w", "9", "--bi-rgb-std", "2")) == 0
    captured = capsys.readouterr()
    assert "was made from other inputs (params: " in captured.err and "4 refined, 0 already done" in captured.out
    assert crf_main(tinyset.crf_argv(root, tmp_path / "fresh", "--bi-w", "9", "--bi-rgb-std", "2")) == 0
    assert files(out) == files(tmp_path / "fresh")
    # New score maps (another extraction into the score folder) redo the CRF outputs too.
    feats = tmp_path / "feats"
    assert extract_tool.main(tinyset.extract_argv(root, w0, feats)) == 0
    assert crf_main(tinyset.crf_argv(root, out, scores=feats)) == 0
    assert extract_tool.main(tinyset.extract_argv(root, w1, feats)) == 0
    capsys.readouterr()
    assert crf_main(tinyset.crf_argv(root, out, scores=feats)) == 0
    captured = capsys.readouterr()
    assert "(scores: " in captured.err and "4 refined, 0 already done" in captured.out


def test_stale_score_maps_are_refused(tiny, tmp_path, capsys):
    root, w0, w1 = tiny
    feats = tmp_path / "feats"
    assert extract_tool.main(tinyset.extract_argv(root, w0, feats)) == 0
    one = tmp_path / "one.txt"
    one.write_text("/images/im0.png\n")
    argv = tinyset.extract_argv(root, w1, feats)
    argv[argv.index("--list") + 1] = str(one)
    assert extract_tool.main(argv) == 0  # im1..im3 now hold w0's maps in a folder recorded for w1
    assert crf_main(tinyset.crf_argv(root, tmp_path / "crf", scores=feats)) == 1
    err = capsys.readouterr().err
    assert "3 image(s) failed" in err and "im1: score map" in err and "predates the current inputs" in err


def test_crf_search_other_scores_start_over(tiny, tmp_path, capsys):
    root, _, _ = tiny
    other = tmp_path / "scores2"
    shutil.copytree(root / "scores", other)
    for name in os.listdir(other):
        if name.endswith(".npy"):
            np.save(other / name, np.load(other / name)[::-1].copy())  # classes swapped: other scores
    out = tmp_path / "s"
    assert search_tool.main(tinyset.search_argv(root, out)) == 0
    first = json.loads((out / "best.json").read_text())
    assert search_tool.main(tinyset.search_argv(root, out, scores=other)) == 0
    assert "was made from other inputs (scores: " in capsys.readouterr().err
    assert search_tool.main(tinyset.search_argv(root, tmp_path / "fresh", scores=other)) == 0
    again = json.loads((out / "best.json").read_text())
    assert again["mean_iou"] != first["mean_iou"]
    for name in ("search.csv", "best.json", "subset.txt"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def make(tmp_path, weights, *targets):
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    text = open(tinyset.PROTOTXT).read().replace("fc8_${EXP}", "fc8_voc12")  # EXP is the folder under make
    (conf / "test.prototxt").write_text(text)
    (conf / "solver.prototxt").write_text("max_iter: 1\n")
    root = tmp_path / "data"
    args = ["make", "-s", "--no-print-directory", *targets, "EXP=synthetic/tiny", f"CONF={conf}",
            f"EXPER={tmp_path / 'exper'}", f"DATA_ROOT={root}", f"LIST_DIR={root}", "SET=list",
            f"IMAGES={root / 'images'}", f"GT={root / 'labels'}", f"CLASSES={root / 'classes.txt'}",
            f"WEIGHTS={weights}", "JOBS=1", "CRF_ARGS=--iters 3 --quiet", f"PY={REPO / '.venv' / 'bin' / 'python'}",
            "EXTRACT_ARGS=--set LIST= --set LIST_ID= --quiet --workers 1"]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, env=tinyset.env(), timeout=300)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_eval_with_other_weights_redoes_the_stages(tiny, tmp_path):
    root, w0, w1 = tiny
    shutil.copytree(root, tmp_path / "data", ignore=shutil.ignore_patterns("scores"))
    res = tmp_path / "exper" / "res" / "list"
    r = make(tmp_path, w0, str(res / "eval_dcnn.json"))
    assert r.returncode == 0, r.stderr
    old = json.loads((res / "eval_dcnn.json").read_text())
    stamp = tmp_path / "exper" / "features" / "list" / ".done"
    assert stamp.read_bytes() == (stamp.parent / RECORD).read_bytes()
    before = os.stat(res / "eval_dcnn.json").st_mtime_ns
    r = make(tmp_path, w0, str(res / "eval_dcnn.json"))  # same inputs: the stages run, nothing is redone
    assert r.returncode == 0, r.stderr
    assert "0 written, 4 already done" in r.stderr and os.stat(res / "eval_dcnn.json").st_mtime_ns == before
    r = make(tmp_path, w1, str(res / "eval_dcnn.json"))  # other weights: extraction and evaluation redone
    assert r.returncode == 0, r.stderr
    assert "was made from other inputs (weights: " in r.stderr
    new = json.loads((res / "eval_dcnn.json").read_text())
    assert json.loads(stamp.read_text())["inputs"]["weights"] == file_digest(w1)
    assert new["confusion"] != old["confusion"]
    # Issue 24: a changed image (same name and size) redoes its id, and the evaluation after it.
    image = tmp_path / "data" / "images" / "im1.png"
    before = os.stat(res / "eval_dcnn.json").st_mtime_ns
    image.write_bytes((tmp_path / "data" / "images" / "im2.png").read_bytes())
    os.utime(image, ns=(before, before + 10 ** 9))
    r = make(tmp_path, w1, str(res / "eval_dcnn.json"))
    assert r.returncode == 0, r.stderr
    assert "1 written, 3 already done" in r.stderr and os.stat(res / "eval_dcnn.json").st_mtime_ns != before


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_refuses_to_fall_back_to_fillers_outside_the_synthetic_set(tmp_path):
    """A real dataset's missing INIT stops make (a rebuild after a prototxt edit would otherwise
    retrain from the fillers); INIT=none asks for the fillers."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "solver.prototxt").write_text("max_iter: 1\n")
    (conf / "train.prototxt").write_text("")
    base = ["make", "-s", "--no-print-directory", "train", "EXP=camvid/none", f"CONF={conf}",
            f"EXPER={tmp_path / 'exper'}", f"PY={REPO / '.venv' / 'bin' / 'python'}"]
    r = subprocess.run(base + [f"INIT={tmp_path / 'missing.caffemodel'}"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "would train from the prototxt's fillers" in r.stderr
    assert not (tmp_path / "exper").exists()
    dry = subprocess.run(base + ["INIT=none", "-n"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "tools/train.py" in dry.stdout and "--weights" not in dry.stdout
