"""Peak resident memory of one TEST forward: the engine vs OpenCV 4 dnn, same net and weights.

Each runs in a fresh process that loads the deploy prototxt and caffemodel, runs the input
once (the warm-up) and then --reps more times, and reports its peak resident set size
(ru_maxrss): the engine through caffe.net.Net under inference mode, keeping only the output
blob (intermediates are dropped after their last reader, caffe/inference.py), and, for
comparison, with every blob kept (``outputs="all"``, what pycaffe's ``net.blobs`` shows);
OpenCV through bench/peer_opencv.py in .venv-peers (``make bench-peers-env``); with --caffe, a
Caffe build's ``caffe test`` of the same deploy net and weights (TEST-phase forwards only,
bench_peers.caffe_test_peak_mib). Also prints
each process's resident memory before the forward (Python, the library, the weights), so the
forward's own share shows. Not a test.

  .venv/bin/python bench/bench_memory.py [--net largefov:513] [--reps 1] [--caffe /path/to/caffe]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def engine_child(prototxt: str, weights: str, x_path: str, blob: str, keep_all: bool, reps: int) -> None:
    sys.path.insert(0, ROOT)
    from caffe import threads
    threads.configure()
    import numpy as np
    import torch
    from caffe.net import Net
    net = Net(prototxt, "TEST")
    net.copy_from(weights)
    x = torch.from_numpy(np.load(x_path))
    before = _rss_mib()
    with torch.inference_mode():
        for _ in range(1 + reps):
            out = net({"data": x}, outputs="all" if keep_all else [blob])
            del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mib": before, "peak_rss_mib": peak}))


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--engine-child":
        a = sys.argv[2:]
        engine_child(a[0], a[1], a[2], a[3], a[4] == "all", int(a[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="largefov:513")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--opencv-python", default=os.path.join(ROOT, ".venv-peers", "bin", "python"))
    ap.add_argument("--caffe", help="a Caffe build's `caffe` binary, for a `caffe test` row")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_peers
    name, hw = bench_peers.parse_net(args.net)
    print(f"{name} {hw[0]}x{hw[1]}, TEST forward, batch 1, float32; peak resident memory (MiB) of a fresh process")
    with tempfile.TemporaryDirectory() as tmp:
        case = bench_peers.Case(name, hw, tmp, with_onnx=False)
        rows = []
        for label, keep in (("engine (output only)", "out"), ("engine (every blob kept)", "all")):
            proc = subprocess.run([sys.executable, __file__, "--engine-child", case.prototxt, case.weights, case.input,
                                   case.blob, keep, str(args.reps)], capture_output=True, text=True, check=True)
            rows.append((label, json.loads(proc.stdout.strip().splitlines()[-1])))
        if os.path.exists(args.opencv_python):
            proc = subprocess.run([args.opencv_python, os.path.join(ROOT, "bench", "peer_opencv.py"), case.prototxt,
                                   case.weights, case.input, case.blob, os.path.join(tmp, "cv.npy"), "--reps",
                                   str(args.reps)], capture_output=True, text=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"error": proc.stderr}
            rows.append(("OpenCV " + res.get("opencv", "4"), res))
        else:
            print("no .venv-peers (make bench-peers-env): no OpenCV row")
        if args.caffe:
            peak, note = bench_peers.caffe_test_peak_mib(case, args.caffe, args.reps)
            rows.append(("Caffe (caffe test)", {"peak_rss_mib": peak} if peak else {"error": note}))
            if peak:
                print(f"Caffe: {args.caffe}, the net {note}")
    print(f"{'':<26} {'before forward':>14} {'peak':>8}")
    for label, res in rows:
        if "error" in res:
            print(f"{label:<26} error: {res['error']}")
            continue
        before = res.get("before_mib")
        print(f"{label:<26} {'' if before is None else f'{before:.0f}':>14} {res['peak_rss_mib']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
