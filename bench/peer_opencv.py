"""Runs one Caffe net under OpenCV 4.x's dnn module: the OpenCV side of bench/bench_peers.py.

Started by bench_peers.py in the side virtual environment ``.venv-peers`` (``make
bench-peers-env``: opencv-python-headless<4.11 and numpy, never a project dependency; OpenCV 5
removed the Caffe importer), so it imports nothing from this project. Reads a deploy prototxt
and its caffemodel with cv2.dnn.readNetFromCaffe, runs the input (an .npy file) once to warm
up and once more per repetition, writes the output blob to an .npy file and prints one JSON
line: {"opencv": version, "threads": n, "times": [seconds...], "peak_rss_mib": the process's
peak resident memory}, or {"error": message} when
OpenCV cannot read or run the net.

  .venv-peers/bin/python bench/peer_opencv.py PROTOTXT CAFFEMODEL INPUT.npy OUTPUT_BLOB OUT.npy \
      [--threads N] [--reps R]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("prototxt", "weights", "input", "blob", "out"):
        ap.add_argument(name)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    import cv2
    cv2.setNumThreads(args.threads)
    try:
        net = cv2.dnn.readNetFromCaffe(args.prototxt, args.weights)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        x = np.load(args.input)
        net.setInput(x)
        y = net.forward(args.blob)            # warm-up (OpenCV plans its buffers here)
        times = []
        for _ in range(args.reps):
            net.setInput(x)
            t = time.perf_counter()
            y = net.forward(args.blob)
            times.append(time.perf_counter() - t)
    except cv2.error as e:
        msg = [line for line in str(e).strip().splitlines() if "error:" in line] or [str(e).strip() or "cv2.error"]
        print(json.dumps({"error": msg[0]}))
        return 0
    np.save(args.out, np.asarray(y, np.float32))
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # KiB on Linux
    print(json.dumps({"opencv": cv2.__version__, "threads": cv2.getNumThreads(), "times": times,
                      "peak_rss_mib": peak}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
