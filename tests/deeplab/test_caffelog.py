"""Caffe-format training logs: a hand-written log parsed into rows, CSV, plot and the tool."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from deeplab import USER_ERRORS
from deeplab.report.caffelog import parse_log, to_csv, write_plot
from deeplab.cli import run_main

# Old-style and new-style loss lines, a multi-valued accuracy blob, two test nets, a nan,
# unrelated lines, and a run across New Year (Dec 31 -> Jan 1).
LOG = """\
Log file created at: 2015/12/31 23:59:50
Running on machine: gpu7
Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg
I1231 23:59:50.000000 12345 caffe.cpp:185] Using GPUs 0
I1231 23:59:55.500000 12345 net.cpp:50] Initializing net from parameters:
I1231 23:59:58.000000 12345 solver.cpp:280] Solving DeepLab-LargeFOV
I1231 23:59:58.000000 12345 solver.cpp:330] Iteration 0, Testing net (#0)
I1231 23:59:59.000000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.1
I1231 23:59:59.000000 12345 solver.cpp:397]     Test net output #1: loss = 3.0 (* 1 = 3.0 loss)
I1231 23:59:59.000000 12345 solver.cpp:330] Iteration 0, Testing net (#1)
I1231 23:59:59.000000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.2
I1231 23:59:59.250000 12345 solver.cpp:228] Iteration 0, loss = 3.5
I1231 23:59:59.250000 12345 solver.cpp:244]     Train net output #0: accuracy = 0.05
I1231 23:59:59.250000 12345 solver.cpp:244]     Train net output #1: accuracy = 0.04
I1231 23:59:59.250000 12345 solver.cpp:244]     Train net output #2: accuracy = 0.01
I1231 23:59:59.250000 12345 solver.cpp:244]     Train net output #3: loss = 3.5 (* 1 = 3.5 loss)
I1231 23:59:59.250000 12345 sgd_solver.cpp:106] Iteration 0, lr = 0.001
train:  10%|#         | 10/100 [00:01<00:09, 10.0it/s]
I0101 00:00:08.000000 12345 solver.cpp:218] Iteration 20 (2.1 iter/s, 9.5s/20 iters), loss = 1.25e+00
I0101 00:00:08.000000 12345 solver.cpp:237]     Train net output #0: accuracy = 0.5
I0101 00:00:08.000000 12345 solver.cpp:237]     Train net output #1: accuracy = 0.3
I0101 00:00:08.000000 12345 solver.cpp:237]     Train net output #2: accuracy = 0.2
I0101 00:00:08.000000 12345 solver.cpp:237]     Train net output #3: loss = 1.25 (* 1 = 1.25 loss)
I0101 00:00:08.000000 12345 sgd_solver.cpp:106] Iteration 20, lr = 0.0005
W0101 00:00:09.000000 12345 solver.cpp:260] something odd
I0101 00:00:10.000000 12345 solver.cpp:228] Iteration 40, loss = -nan
I0101 00:00:10.000000 12345 sgd_solver.cpp:106] Iteration 40, lr = 0.0001
I0101 00:00:11.000000 12345 solver.cpp:454] Snapshotting to binary proto file x_iter_40.caffemodel
I0101 00:00:11.000000 12345 solver.cpp:330] Iteration 40, Testing net (#0)
I0101 00:00:12.000000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.7
I0101 00:00:12.000000 12345 solver.cpp:397]     Test net output #1: loss = 0.9 (* 1 = 0.9 loss)
I0101 00:00:12.000000 12345 solver.cpp:315] Optimization Done.
"""


def test_rows_columns_and_times(tmp_path):
    log = parse_log(LOG.splitlines())
    assert log.columns == ["iteration", "seconds", "loss", "lr", "train_accuracy", "train_accuracy_1",
                           "train_accuracy_2", "train_loss", "test_accuracy", "test_loss", "test1_accuracy"]
    assert [r["iteration"] for r in log.rows] == [0, 20, 40]
    r0, r20, r40 = log.rows
    assert r0["seconds"] == 0.0  # from the "Solving" line
    assert r20["seconds"] == pytest.approx(10.0)  # across midnight of New Year's Eve
    assert r40["seconds"] == pytest.approx(12.0)
    assert (r0["loss"], r0["lr"], r0["train_accuracy_2"], r0["train_loss"]) == (3.5, 0.001, 0.01, 3.5)
    assert (r0["test_accuracy"], r0["test_loss"], r0["test1_accuracy"]) == (0.1, 3.0, 0.2)
    assert (r20["loss"], r20["lr"], r20["train_accuracy_1"]) == (1.25, 0.0005, 0.3)
    assert "test_accuracy" not in r20
    assert math.isnan(r40["loss"]) and r40["lr"] == 0.0001 and r40["test_accuracy"] == 0.7
    assert log.series("test_accuracy") == ([0, 40], [0.1, 0.7])


def test_csv_text():
    lines = to_csv(parse_log(LOG.splitlines())).splitlines()
    assert lines[0] == ("iteration,seconds,loss,lr,train_accuracy,train_accuracy_1,train_accuracy_2,train_loss,"
                        "test_accuracy,test_loss,test1_accuracy")
    assert lines[1] == "0,0,3.5,0.001,0.05,0.04,0.01,3.5,0.1,3,0.2"
    assert lines[2] == "20,10,1.25,0.0005,0.5,0.3,0.2,1.25,,,"
    assert lines[3] == "40,12,nan,0.0001,,,,,0.7,0.9,"


def test_without_timestamps_and_errors(tmp_path):
    log = parse_log(["Iteration 5, loss = 2", "Iteration 5, lr = 0.1"])
    assert log.rows == [{"iteration": 5, "loss": 2.0, "lr": 0.1}]
    with pytest.raises(USER_ERRORS, match="no Caffe training lines"):
        parse_log(["hello", "world"])
    with pytest.raises(USER_ERRORS, match="cannot read training log"):
        parse_log(tmp_path / "missing.log")


def test_plot_is_a_png(tmp_path):
    write_plot(parse_log(LOG.splitlines()), tmp_path / "p.png", "t")
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
        assert np.asarray(im.convert("L")).std() > 5  # something is drawn


def test_tool(tmp_path, capsys):
    from deeplab.commands import parse_log as tool

    (tmp_path / "train.log").write_text(LOG)
    assert tool.main([str(tmp_path / "train.log"), "--csv", str(tmp_path / "t.csv"),
                      "--plot", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[2].startswith("20,10,1.25")
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert tool.main([str(tmp_path / "train.log")]) == 0
    assert capsys.readouterr().out.startswith("iteration,seconds,loss,lr")
    (tmp_path / "empty.log").write_text("nothing here\n")
    with pytest.raises(SystemExit) as e:
        run_main(tool.main, [str(tmp_path / "empty.log")])
    assert e.value.code == 2
    assert "no Caffe training lines" in capsys.readouterr().err
