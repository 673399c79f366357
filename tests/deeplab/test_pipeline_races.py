"""Issue 24 items 1, 2, 7 and 14 (pipeline side): two runs into one folder, changed input
images, a worker dying of memory, out of memory in the net, SIGTERM, non-ASCII netinfo.

The concurrency and changed-input cases run the tools as subprocesses. They are deterministic:
the test holds the output folder itself (deeplab.provenance.open_output, as a run does) and
then starts the second run; a run is stopped at a known point by an image that is a named
pipe (its read blocks until the test writes), and the test waits for conditions (a file, a
line), never for a time.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import tinyset
from conftest import REPO
from deeplab.provenance import JOURNAL, LOCK, RECORD, open_output, read_journal, read_record


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tinyset.make(root)
    return root, tinyset.weights(root / "w0.caffemodel", 0), tinyset.weights(root / "w1.caffemodel", 1)


@pytest.fixture
def tiny(base, tmp_path):
    """A fresh copy of the tiny set (cases change its images)."""
    root = tmp_path / "t"
    shutil.copytree(base[0], root)
    return root, root / "w0.caffemodel", root / "w1.caffemodel"


def outputs(folder) -> dict[str, bytes]:
    return tinyset.outputs(folder)


def last_line(r: subprocess.CompletedProcess) -> str:
    return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


# ---------------------------------------------------------------- item 1: two runs, one folder
def test_densecrf_into_a_folder_held_by_a_run_with_other_inputs_is_refused(tiny, tmp_path):
    root, _, _ = tiny
    out = tmp_path / "crf"
    with open_output(out, "densecrf", {"params": {"bi_w": 9}}):  # another run, other parameters
        record = (out / RECORD).read_bytes()
        r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, out))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert last_line(r).startswith(f"error: --out folder {out} is in use by another run with other inputs (")
        assert "two runs into one folder would mix their outputs" in r.stderr
        assert (out / RECORD).read_bytes() == record  # nothing touched: the holder's record stays
        assert not [f for f in os.listdir(out) if not f.startswith(".")]
    assert not (out / LOCK).exists()  # the last run out removes the lock file
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, out))
    assert r.returncode == 0 and "4 refined, 0 already done" in r.stdout, r.stderr
    assert "was made from other inputs (" in r.stderr and "params: " in r.stderr


def test_extract_into_a_folder_held_with_other_weights_is_refused(tiny, tmp_path):
    root, w0, w1 = tiny
    out = tmp_path / "feats"
    assert tinyset.run_tool("extract", tinyset.extract_argv(root, w0, out)).returncode == 0
    held = open_output(out, "extract", {**read_record(out)["inputs"], "weights": "another digest"}, quiet=True)
    try:
        r = tinyset.run_tool("extract", tinyset.extract_argv(root, w1, out))
        assert r.returncode == 2 and last_line(r).startswith(f"error: --out folder {out} is in use by another run "
                                                             f"with other inputs (weights: "), r.stderr
    finally:
        held.close()
    r = tinyset.run_tool("extract", tinyset.extract_argv(root, w1, out))
    assert r.returncode == 0 and "4 written, 0 already done" in r.stderr, r.stderr


def test_shards_of_one_run_share_the_folder_and_end_as_one_run(tiny, tmp_path):
    root, _, _ = tiny
    out = tmp_path / "crf"
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, out, "--shard", "1/2"))
    assert r.returncode == 0 and "2 refined" in r.stdout, r.stderr
    # Shard 1 is still running (the test holds the folder with its inputs); shard 2 joins it.
    with open_output(out, "densecrf", read_record(out)["inputs"]):
        r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, out, "--shard", "2/2"))
        assert r.returncode == 0 and "2 refined, 0 already done" in r.stdout, r.stderr
        assert (out / LOCK).exists()  # still held by "shard 1"
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, out))
    assert r.returncode == 0 and "0 refined, 4 already done" in r.stdout, r.stderr
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, tmp_path / "one"))
    assert r.returncode == 0
    assert outputs(out) == outputs(tmp_path / "one")  # journal included: one line per id, in id order
    assert sorted(read_journal(out)) == ["im0", "im1", "im2", "im3"]


def test_a_killed_holder_leaves_the_folder_usable(tiny, tmp_path):
    """flock dies with its process: a run killed -9 leaves .lock behind, but not held."""
    root, _, _ = tiny
    out = tmp_path / "crf"
    code = ("import sys, os, signal; from deeplab.provenance import open_output; "
            "open_output(sys.argv[1], 'densecrf', {'params': 'other'}); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, env=tinyset.env(), timeout=120)
    assert r.returncode == -signal.SIGKILL and (out / LOCK).exists()
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, out))
    assert r.returncode == 0 and "4 refined" in r.stdout, r.stderr
    assert not (out / LOCK).exists()


# ---------------------------------------------------------------- item 2: a changed input image
def replace_image(root, ident="im1", other="im2"):
    """Another picture under the same name (same size), written later than the first."""
    path = root / "images" / f"{ident}.png"
    before = os.stat(path)
    cv2.imwrite(str(path), cv2.imread(str(root / "images" / f"{other}.png"))[::-1].copy())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10 ** 9))


def test_changed_image_is_redone_and_never_paired_with_its_old_score_map(tiny, tmp_path):
    root, w0, _ = tiny
    feats, crf = tmp_path / "feats", tmp_path / "crf"
    assert tinyset.run_tool("extract", tinyset.extract_argv(root, w0, feats)).returncode == 0
    assert tinyset.run_tool("densecrf", tinyset.crf_argv(root, crf, scores=feats)).returncode == 0
    replace_image(root)
    # The CRF stage before the extraction is redone: the new image with the old map is refused.
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, crf, scores=feats))
    assert r.returncode == 1 and "0 refined, 3 already done (skipped), 1 failed" in r.stderr, r.stderr
    assert (f"im1: score map {feats / 'im1.npy'} was made from an earlier version of {root / 'images' / 'im1.png'}"
            in r.stderr)
    r = tinyset.run_tool("extract", tinyset.extract_argv(root, w0, feats))
    assert r.returncode == 0 and "1 written, 3 already done" in r.stderr, r.stderr
    r = tinyset.run_tool("densecrf", tinyset.crf_argv(root, crf, scores=feats))
    assert r.returncode == 0 and "1 refined, 3 already done" in r.stdout, r.stderr
    # What a run from scratch on the new images writes, byte for byte.
    assert tinyset.run_tool("extract", tinyset.extract_argv(root, w0, tmp_path / "feats2")).returncode == 0
    assert tinyset.run_tool("densecrf", tinyset.crf_argv(root, tmp_path / "crf2",
                                                         scores=tmp_path / "feats2")).returncode == 0
    fresh, again = outputs(tmp_path / "feats2"), outputs(feats)
    assert {k: v for k, v in again.items() if k != RECORD} == {k: v for k, v in fresh.items() if k != RECORD}
    assert {k: v for k, v in outputs(crf).items() if k not in (RECORD, JOURNAL)} == \
        {k: v for k, v in outputs(tmp_path / "crf2").items() if k not in (RECORD, JOURNAL)}  # other score files


def test_crf_search_starts_over_when_an_image_changes(tiny, tmp_path):
    root, _, _ = tiny
    out = tmp_path / "s"
    assert tinyset.run_tool("crf_search", tinyset.search_argv(root, out)).returncode == 0
    replace_image(root)
    r = tinyset.run_tool("crf_search", tinyset.search_argv(root, out))
    assert r.returncode == 0 and "was made from other inputs (subset_files: " in r.stderr, r.stderr


# ---------------------------------------------------------------- item 7: out of memory
ABORT_ON_IM1 = """
import os, sys
import deeplab.crf.batch as batch
from deeplab.cli import run_main
from deeplab.commands.densecrf import main
real = batch.refine
def refine(image, *a, **k):  # pydensecrf2's C++ on an image too large: std::bad_alloc, abort()
    if int(image.sum()) == int(sys.argv[1]):
        os.abort()
    return real(image, *a, **k)
batch.refine = refine
run_main(main, sys.argv[2:])
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_densecrf_image_whose_worker_dies_fails_alone(tiny, tmp_path, jobs):
    root, _, _ = tiny
    marker = int(cv2.imread(str(root / "images" / "im1.png")).sum())
    others = [int(cv2.imread(str(root / "images" / f"im{k}.png")).sum()) for k in (0, 2, 3)]
    assert marker not in others
    argv = tinyset.crf_argv(root, tmp_path / "crf")
    argv[argv.index("-j") + 1] = jobs
    r = subprocess.run([sys.executable, "-c", ABORT_ON_IM1, str(marker), *argv], cwd=REPO, env=tinyset.env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # not 134: the run survived and says what happened
    assert "3 refined, 0 already done (skipped), 1 failed" in r.stderr
    assert "im1: worker process died (out of memory or crashed)" in r.stderr
    assert sorted(f for f in os.listdir(tmp_path / "crf") if not f.startswith(".")) == \
        ["im0.png", "im2.png", "im3.png"]


def test_extract_out_of_memory_is_one_line_naming_the_image(tiny, tmp_path, capsys, monkeypatch):
    import torch

    from deeplab.cli import run_main
    from deeplab.commands import extract as extract_tool
    from deeplab.extract.scorenet import ScoreNet

    def forward(self, batch):
        torch.empty(1 << 50, dtype=torch.uint8)  # the CPU allocator's own failure (1 PiB)

    monkeypatch.setattr(ScoreNet, "forward", forward)
    root, w0, _ = tiny
    with pytest.raises(SystemExit) as e:
        run_main(extract_tool.main, tinyset.extract_argv(root, w0, tmp_path / "out"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {root / 'list.txt'}:1 (id im0, a 40x56 image): out of memory on cpu: ")
    assert "asked for 1.00 PiB more than was free" in err


# ---------------------------------------------------------------- item 14: SIGTERM, non-ASCII
def test_sigterm_to_extract_says_what_was_done_and_leaves_no_temporary(tiny, tmp_path):
    root, w0, _ = tiny
    fifo = root / "images" / "imF.png"
    os.mkfifo(fifo)
    lines = (root / "list.txt").read_text().splitlines()
    (root / "list.txt").write_text("\n".join(lines[:2] + ["/images/imF.png"] + lines[2:]) + "\n")
    out = tmp_path / "feats"
    argv = tinyset.extract_argv(root, w0, out)
    proc = subprocess.Popen(tinyset.command("extract", argv), cwd=REPO, env=tinyset.env(), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # im0 and im1 go through; the read of imF blocks until the test writes to the pipe.
        while not ((out / "im0.npy").exists() and (out / "im1.npy").exists()):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)  # polling a condition, not waiting for a time
        proc.send_signal(signal.SIGTERM)
        first = proc.stderr.readline()  # said at once, before the run winds down
        assert first.startswith("SIGTERM received: stopping"), first
        with open(fifo, "wb"):
            pass  # unblock the read (an empty file): the run is already stopping
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 143, first + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "Traceback" not in rest
    assert f"SIGTERM: 2 written, 0 already done of 5 images -> {out}; the same command does the rest" in rest
    assert rest.strip().splitlines()[-1] == "terminated"
    assert not [f for f in os.listdir(out) if ".tmp" in f] and not (out / LOCK).exists()
    os.unlink(fifo)
    shutil.copy(root / "images" / "im0.png", fifo)
    r = tinyset.run_tool("extract", argv)
    assert r.returncode == 0 and "3 written, 2 already done" in r.stderr, r.stderr


def test_netinfo_non_ascii_layer_names_on_an_ascii_stdout(tmp_path):
    p = tmp_path / "n.prototxt"
    p.write_text('input: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
                 'layer { name: "çonv卷" type: "ReLU" bottom: "data" top: "r" }\n', encoding="utf-8")
    r = subprocess.run([sys.executable, "tools/netinfo.py", str(p)], cwd=REPO, capture_output=True,
                       env={**tinyset.env(), "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert "\\xe7onv\\u5377" in r.stdout.decode("ascii")
