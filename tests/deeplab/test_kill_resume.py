"""Issue 15 items 11 and 15: kill -9 at a random moment, then the same command again.

Each stage (extract, densecrf, crf_search) runs as a subprocess and is killed with SIGKILL a
random few milliseconds after its first output appears; the same command then runs to the
end, and its folder must equal, byte for byte, that of an uninterrupted run, with no
temporary file left. densecrf's worker processes must die with their killed parent.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest

import tinyset
from conftest import REPO
from deeplab.commands import crf_search as search_tool
from deeplab.commands import extract as extract_tool
from deeplab.commands.densecrf import main as crf_main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tinyset.make(root, n=16)
    return root, tinyset.weights(root / "w0.caffemodel", 0)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except OSError:
        return False


def kill_midway(tool: str, argv: list[str], out, first: str, want_children: int = 0) -> tuple[float, list[int]]:
    """Start the tool, wait for ``out/first`` (or any non-hidden output), kill -9 it a random
    0-60 ms later; returns the delay and the child processes it had."""
    proc = subprocess.Popen(tinyset.command(tool, argv), cwd=REPO, env=tinyset.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    delay = random.uniform(0.0, 0.06)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if want_children and len(children) < want_children:
                children = _children(proc.pid)
            if (out / first).exists() and len(children) >= want_children:
                break
            time.sleep(0.005)
        time.sleep(delay)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
    return delay, children


def temps(folder) -> list[str]:
    return [f for f in os.listdir(folder) if ".tmp" in f]


def test_extract_killed_then_rerun_equals_uninterrupted(tiny, tmp_path):
    root, w0 = tiny
    assert extract_tool.main(tinyset.extract_argv(root, w0, tmp_path / "ref", "--labels-out",
                                                  str(tmp_path / "ref_dcnn"))) == 0
    out, labels = tmp_path / "out", tmp_path / "dcnn"
    argv = tinyset.extract_argv(root, w0, out, "--labels-out", str(labels))
    delay, _ = kill_midway("extract", argv, out, "im0.npy")
    (out / ".im3.abcdefgh.tmp.npy").write_bytes(b"half a file")  # what a kill during a write leaves
    assert extract_tool.main(argv) == 0, f"killed {delay:.3f}s after the first output"
    assert tinyset.outputs(out) == tinyset.outputs(tmp_path / "ref"), f"killed {delay:.3f}s in"
    assert tinyset.outputs(labels) == tinyset.outputs(tmp_path / "ref_dcnn")
    assert not temps(out) and not temps(labels)


def test_densecrf_killed_leaves_no_worker_and_rerun_equals_uninterrupted(tiny, tmp_path):
    root, _ = tiny
    assert crf_main(tinyset.crf_argv(root, tmp_path / "ref", "--save-prob")) == 0
    out = tmp_path / "out"
    argv = tinyset.crf_argv(root, out, "--save-prob")
    argv[argv.index("-j") + 1] = "2"
    delay, workers = kill_midway("densecrf", argv, out, "im0.png", want_children=2)
    assert workers, "the pool had no worker processes to check"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "densecrf workers outlived their killed parent"
    (out / ".im5.abcdefgh.tmp.png").write_bytes(b"half a file")
    assert crf_main(argv) == 0
    assert tinyset.outputs(out) == tinyset.outputs(tmp_path / "ref"), f"killed {delay:.3f}s in"
    assert not temps(out)


def test_crf_search_killed_then_rerun_equals_uninterrupted(tiny, tmp_path):
    root, _ = tiny
    assert search_tool.main(tinyset.search_argv(root, tmp_path / "ref")) == 0
    out = tmp_path / "out"
    argv = tinyset.search_argv(root, out)
    delay, _ = kill_midway("crf_search", argv, out, "search.csv")
    (out / ".search.abcdefgh.tmp.csv").write_bytes(b"half a file")
    assert search_tool.main(argv) == 0
    assert tinyset.outputs(out) == tinyset.outputs(tmp_path / "ref"), f"killed {delay:.3f}s in"
    assert not temps(out)


def test_process_pool_after_opencv_threads_does_not_hang():
    """A pool forked after the parent ran OpenCV's threads (extraction, image reading) used to
    deadlock in its workers' cv2.setNumThreads: the pool stops those threads before forking."""
    code = ("import numpy as np, cv2\n"
            "from deeplab.parallel import run_tasks\n"
            "cv2.resize(np.zeros((1500, 1500), np.float32), (100, 100))\n"
            "def f(x):\n"
            "    return float(cv2.resize(np.ones((1500, 1500), np.float32), (10, 10)).sum()) + x\n"
            "print(sorted(fut.result() for _, fut in run_tasks(f, [1, 2, 3], 2)))\n")
    r = subprocess.run([tinyset.sys.executable, "-c", code], cwd=REPO, env=tinyset.env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[101.0, 102.0, 103.0]", r.stderr
