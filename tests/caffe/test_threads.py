"""The thread policy (caffe/threads.py): cores from affinity and cgroup quota, the commands'
defaults, and one thread per pool worker."""
import os
import subprocess
import sys

from caffe import threads
from conftest import REPO


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(str(tmp_path)) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cgroup_quota(str(tmp_path)) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads._cgroup_quota(str(tmp_path)) is None
    assert threads._cgroup_quota(str(tmp_path / "absent")) is None


def test_cores_follow_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.available_cores() == 4
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 2.5)      # 2.5 CPUs: 3 threads can use them
    assert threads.available_cores() == 3
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 0.2)
    assert threads.available_cores() == 1


def _child(code: str, **env) -> str:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS",
                                                             "CAFFE_NUM_THREADS")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.split()


CONFIGURE = ("import os, caffe.threads as t; n = t.configure(); import torch; "
             "print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])")


def test_configure_before_torch_loads():
    n, torch_threads, policy = _child(CONFIGURE)
    assert n == torch_threads == str(threads.available_cores())
    assert policy == "PASSIVE"


def test_configure_keeps_what_the_user_set():
    assert _child(CONFIGURE, CAFFE_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE") == ["1", "1", "ACTIVE"]


def test_pool_workers_get_one_thread():
    code = ("import torch; torch.set_num_threads(2)\n"
            "from deeplab.parallel import run_tasks\n"
            "def f(i):\n    import torch\n    return torch.get_num_threads()\n"
            "if __name__ == '__main__':\n"
            "    print(*sorted(fut.result() for _, fut in run_tasks(f, [1, 2, 3], workers=2)))\n")
    assert _child(code) == ["1", "1", "1"]
