"""One helper per job: the list reader, the image reader, shards, ranges, the worker pool,
and torch-free imports of the CPU stages."""
from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from caffe import CaffeError
from caffe.util.images import read_image
from caffe.data.image_seg import NONE, read_list as imageseg_list
from caffe.util.lists import read_list
from conftest import REPO
from deeplab.cli import parse_range, shard
from deeplab.lists import read_ids, read_items
from deeplab.parallel import Pool, run_tasks


def _set(tmp_path, names=("a", "b")):
    for n in names:
        (tmp_path / "JPEGImages").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "JPEGImages" / f"{n}.png"), np.zeros((4, 5, 3), np.uint8))
        (tmp_path / "Seg").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "Seg" / f"{n}.png"), np.zeros((4, 5), np.uint8))


def test_one_list_reader_crlf_bom_comments(tmp_path):
    _set(tmp_path)
    p = tmp_path / "list.txt"
    p.write_bytes(b"\xef\xbb\xbf/JPEGImages/a.png /Seg/a.png\r\n# a comment\r\n\r\n/JPEGImages/b.png /Seg/b.png\r\n")
    lines = read_list(p)
    assert [(x.lineno, x.image, x.label) for x in lines] == [(1, "/JPEGImages/a.png", "/Seg/a.png"),
                                                              (4, "/JPEGImages/b.png", "/Seg/b.png")]
    assert read_ids(p) == ["a", "b"]
    assert [(i.lineno, i.id, i.path) for i in read_items(p, tmp_path)] == [
        (1, "a", str(tmp_path / "JPEGImages" / "a.png")), (4, "b", str(tmp_path / "JPEGImages" / "b.png"))]
    entries = imageseg_list(str(p), str(tmp_path))
    assert [(e.where, e.image) for e in entries] == [(f"{p}:1", f"{tmp_path}/JPEGImages/a.png"),
                                                    (f"{p}:4", f"{tmp_path}/JPEGImages/b.png")]


def test_names_with_spaces_and_empty_lists_same_answer_everywhere(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("/JPEGImages/a b.png /Seg/a b.png\n")
    readers = [lambda: read_list(p), lambda: read_ids(p), lambda: read_items(p, tmp_path),
               lambda: imageseg_list(str(p), str(tmp_path)), lambda: imageseg_list(str(p), "", NONE)]
    for reader in readers:
        with pytest.raises(CaffeError, match=r"list.txt:1: expected 'image \[label\]', got 4 columns .*spaces"):
            reader()
    p.write_text("# nothing\n\n")
    for reader in readers:
        with pytest.raises(CaffeError, match="list file .*list.txt lists no images"):
            reader()
    p.write_bytes(b"\xff\xfe\x00bin")
    with pytest.raises(CaffeError, match="is not UTF-8 text"):
        read_ids(p)


def test_one_image_reader(tmp_path):
    bgr = np.zeros((3, 4, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    cv2.imwrite(str(tmp_path / "x.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), bgr)
    assert read_image(tmp_path / "x.png", rgb=True)[0, 0].tolist() == [0, 0, 200]
    assert read_image(tmp_path / "x.png", color=False).shape == (3, 4, 1)
    cv2.imwrite(str(tmp_path / "g.png"), np.full((2, 2), 7, np.uint8))
    assert read_image(tmp_path / "g.png").shape == (2, 2, 3)  # grey expanded, as Caffe's is_color
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for name, message in (("nope.png", "not found"), ("empty.jpg", "is not a readable image (empty file)"),
                          ("junk.jpg", "is not a readable image")):
        with pytest.raises(CaffeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_image(tmp_path / name)


def test_shard_and_range():
    items = list(range(7))
    assert shard(items, None) == items
    assert shard(items, "1/3") == [0, 3, 6] and shard(items, "3/3") == [2, 5]
    assert sorted(shard(items, "1/2") + shard(items, "2/2")) == items
    with pytest.raises(CaffeError, match="--shard expects K/N"):
        shard(items, "4/3")
    assert parse_range("50:10:100") == [50, 60, 70, 80, 90, 100]  # start:step:stop, as the paper writes
    assert parse_range("1:4:9", integer=True) == [1, 5, 9]
    assert parse_range("3,1:2,3") == [1, 2, 3]
    with pytest.raises(ValueError, match="did you mean 1:4:9"):
        parse_range("1:9:4")


def _square(x):
    if x == 3:
        raise ValueError("three")
    return x * x


def _pid(_):
    return os.getpid()


def test_pool_runs_in_workers_and_reports_errors():
    got = {item: fut for item, fut in run_tasks(_square, range(5), workers=2)}
    assert {i: f.result() for i, f in got.items() if i != 3} == {0: 0, 1: 1, 2: 4, 4: 16}
    with pytest.raises(ValueError, match="three"):
        got[3].result()
    assert {f.result() for _, f in run_tasks(_pid, range(4), workers=2)} - {os.getpid()}  # other processes
    assert [f.result() for _, f in run_tasks(_pid, range(3), workers=1)] == [os.getpid()] * 3  # in order, here
    with Pool(2, threads=True, limit=1) as pool:
        futures = [pool.submit(_square, i) for i in (1, 2)]
    assert [f.result() for f in futures] == [1, 4]


def test_cpu_stages_import_without_torch():
    code = ("import sys, densecrf, deeplab.crf.batch, deeplab.crf.search, deeplab.eval, deeplab.eval.evaluate, "
            "deeplab.lists, deeplab.parallel, deeplab.report.html, deeplab.commands.eval, deeplab.commands.densecrf; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_pool_workers_die_with_their_parent(tmp_path):
    import signal
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from deeplab.parallel import run_tasks\n"
        "def work(i):\n"
        "    open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
        "    time.sleep(60)\n"
        "for _ in run_tasks(work, range(2), workers=2):\n"
        "    pass\n")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len([p for p in os.listdir(tmp_path) if p.isdigit()]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p) for p in os.listdir(tmp_path) if p.isdigit()]
        assert len(workers) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 20
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in workers)
