"""Threads under load: the engine's forward at 1 thread and at all cores, with and without a
busy neighbour, for each OpenMP wait policy (the measurements behind caffe/threads.py).

A neighbour is a second process spinning on core 0 (what a CRF worker or another job does
to an extraction). Each configuration runs in a fresh process, since OpenMP reads
OMP_WAIT_POLICY when torch loads: ``default`` is libgomp's own (spin ~300k iterations,
then sleep), PASSIVE sleeps at once, ACTIVE spins. ``policy`` is caffe.threads' choice
(what the project's commands get). Prints the median forward time of each, and for each
policy the ratio all-cores / 1 thread (> 1: more threads were slower). Not a test; the
machine's other load shows in the numbers (run it twice).

  .venv/bin/python bench/bench_threads.py [--nets narrow,largefov] [--size 321] [--reps 7]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("default", "PASSIVE", "ACTIVE")


def worker(net_name: str, size: int, threads: int, reps: int) -> None:
    """In the child: time ``reps`` forwards; print one JSON line."""
    import torch     # first: OpenMP reads the environment as torch loads it
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import peer_nets
    torch.set_num_threads(threads)
    net, x, blob = peer_nets.build(net_name, (size, size))
    times = []
    with torch.inference_mode():
        net({"data": x}, outputs=[blob])
        for _ in range(reps):
            t = time.perf_counter()
            net({"data": x}, outputs=[blob])
            times.append(time.perf_counter() - t)
    print(json.dumps({"median": statistics.median(times), "min": min(times)}))


def spin() -> subprocess.Popen:
    """A process spinning on core 0 (the busy neighbour)."""
    code = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def measure(net: str, size: int, threads: int, reps: int, policy: str) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy in ("PASSIVE", "ACTIVE"):
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--worker", net, str(size), str(threads), str(reps)]
    if policy == "policy":   # caffe.threads decides, as the project's commands do
        cmd = [sys.executable, "-c", "import caffe.threads as t; t.configure(); import runpy, sys; "
               f"sys.argv = {cmd[1:]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="narrow,largefov")
    ap.add_argument("--size", type=int, default=321)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--policies", default=",".join(POLICIES + ("policy",)))
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    from caffe.threads import available_cores
    cores = available_cores()
    print(f"{os.cpu_count()} CPUs, {cores} available to this process (affinity, cgroup quota); "
          f"input {args.size}x{args.size}; median of {args.reps} forwards, ms")
    print(f"{'net':<9} {'policy':<8} {'neighbour':<9} {'1 thread':>9} {f'{cores} threads':>10} {'ratio':>6}")
    for net in args.nets.split(","):
        for policy in args.policies.split(","):
            for busy in (False, True):
                hog = spin() if busy else None
                try:
                    one = measure(net, args.size, 1, args.reps, policy)["median"]
                    many = measure(net, args.size, cores, args.reps, policy)["median"]
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                print(f"{net:<9} {policy:<8} {'busy' if busy else 'idle':<9} {one * 1e3:9.1f} {many * 1e3:10.1f} "
                      f"{many / one:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
