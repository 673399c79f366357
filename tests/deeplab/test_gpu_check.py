"""tools/gpu_check.sh (issue 22 item 6): its GPU plan parses with each bench's own parser and names
cuda:N; a failed step is recorded and the next one runs; the CUDA steps say so on the CPU."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import REPO
from deeplab import DeepLabError
from deeplab.recipe.gpu_check import check_plan


def script(tmp_path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh")], cwd=REPO, env=full,
                          capture_output=True, text=True)


def plan(tmp_path, gpu: str) -> list[str]:
    """The commands the script would run for ``GPU=gpu`` (PLAN_ONLY=1)."""
    done = script(tmp_path, GPU=gpu, PLAN_ONLY="1", PYTHON="python3")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "out").exists()   # the plan writes nothing
    return done.stdout.splitlines()


def test_gpu_plan_parses_and_names_the_cuda_device(tmp_path):
    commands = check_plan(plan(tmp_path, "0"), 0)
    assert len(commands) == 8 and all(c[0] == "timeout" for c in commands)
    assert sum(int(c[1]) for c in commands) < 540          # the steps fit 9 minutes
    devices = [c[c.index("--device") + 1] for c in commands if "--device" in c]
    assert devices == ["cuda:0"] * 4
    train = [c for c in commands if "bench/bench_train.py" in c]
    assert "--amp" not in train[0] and "--channels-last" not in train[0]
    assert train[1][train[1].index("--amp") + 1] == "bf16" and "--channels-last" in train[1]
    engine = [c for c in commands if "bench/bench_engine.py" in c]
    assert "--no-channels-last" in engine[0] and "--no-channels-last" not in engine[1]
    crf = next(c for c in commands if "bench/bench_crf_torch.py" in c)
    assert crf[crf.index("--throughput") + 1] == "cuda:0"
    tests = next(c for c in commands if "pytest" in c)
    assert tests[tests.index("-m", 4) + 1] == "device"
    other = plan(tmp_path, "1")
    assert check_plan(other, 1) and "CUDA_VISIBLE_DEVICES=1" in " ".join(other)
    with pytest.raises(DeepLabError, match="runs on cuda:1, not cuda:0"):
        check_plan(other, 0)


def test_check_plan_refuses_what_the_gpu_would_refuse(tmp_path):
    lines = plan(tmp_path, "0")
    with pytest.raises(DeepLabError, match="'cuda0' is not one torch accepts"):
        check_plan([line.replace("--device cuda:0", "--device cuda0") for line in lines], 0)
    with pytest.raises(DeepLabError, match="without its own timeout"):
        check_plan([line.replace("timeout 60 ", "", 1) for line in lines], 0)
    with pytest.raises(DeepLabError, match="lacks crf"):
        check_plan([line for line in lines if "bench_crf_torch" not in line], 0)
    with pytest.raises(DeepLabError, match="bench_train.py refuses these arguments"):
        check_plan([line.replace("--reps 3", "--repeats 3") for line in lines], 0)
    with pytest.raises(DeepLabError, match="not under the 600 s command"):
        check_plan([line.replace("timeout 90 ", "timeout 400 ") for line in lines], 0)


def test_cpu_run_records_failed_steps_goes_on_and_skips_cuda(tmp_path):
    done = script(tmp_path, GPU="", PYTHON="false")   # every Python step fails at once
    summary = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert done.returncode == 1 and sorted(os.listdir(tmp_path / "out")) == ["gpu_check.txt"]
    assert "== versions: failed (exit 1)" in summary and "== tests: failed (exit 1)" in summary
    assert summary.count("skipped: no CUDA") == 6
    assert summary.splitlines()[-1].startswith("gpu_check: 0 ok, 2 failed, 6 skipped")
    late = script(tmp_path / "late", GPU="0", PYTHON="false", WORK_MINUTES="0")
    assert late.returncode == 0   # nothing ran, nothing failed
    assert (tmp_path / "late" / "out" / "gpu_check.txt").read_text().count("left before the deadline") == 8
