"""Peak memory of a TEST forward of DeepLab-LargeFOV through pycaffe (issue 24 item 13).

Builds prototxt/voc12/DeepLab-LargeFOV/test.prototxt as a pycaffe ``caffe.Net`` in TEST, its
ImageSegData layer replaced by an Input of 1 x 3 x SIZE x SIZE and its MatWrite layer left
out, runs one forward on random values, and prints the process's peak resident memory and the
bytes of blob data and diff memory held. ``--touch-diffs`` then reads every blob's ``.diff``
(what a net that allocates every diff at construction holds). Run it in a fresh process for
each figure; nothing is asserted.

  .venv/bin/python bench/bench_test_memory.py [--size 513] [--touch-diffs]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile

import numpy as np
from google.protobuf import text_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOTXT = os.path.join(ROOT, "prototxt", "voc12", "DeepLab-LargeFOV", "test.prototxt")
MAPPING = {"DATA_ROOT": ".", "LIST_DIR": ".", "TEST_SET": "bench", "FEATURE_DIR": ".", "NUM_LABELS": "21"}


def peak_mib() -> float:
    """The process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_net_file(size: int, folder: str) -> str:
    """The LargeFOV test net with an Input data layer of ``size`` and no MatWrite, as a file."""
    from caffe.prototxt import parse_net
    param = parse_net(PROTOTXT, MAPPING)
    layers = [lp for lp in param.layer if lp.type not in ("MatWrite", "ImageSegData")]
    del param.layer[:]
    data = param.layer.add()
    text_format.Parse(f'name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 '
                      f'dim: {size} dim: {size} }} }}', data)
    param.layer.extend(layers)
    path = os.path.join(folder, "net.prototxt")
    with open(path, "w") as f:
        f.write(text_format.MessageToString(param))
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=513)
    ap.add_argument("--touch-diffs", action="store_true", help="read every blob's .diff after the forward")
    args = ap.parse_args(argv)
    import caffe
    import torch
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as tmp:
        net = caffe.Net(test_net_file(args.size, tmp), caffe.TEST)
    print(f"caffe from {os.path.dirname(caffe.__file__)}")
    print(f"after construction: peak RSS {peak_mib():.0f} MiB")
    net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal(net.blobs["data"].shape)
    net.forward()
    if args.touch_diffs:
        for blob in net.blobs.values():
            blob.diff
    data = sum(b.data.nbytes for b in net.blobs.values())
    diffs = sum(b.count * 4 for b in net.blobs.values() if getattr(b, "diff_allocated", True))
    print(f"after one TEST forward at {args.size}x{args.size}{' (every diff read)' if args.touch_diffs else ''}: "
          f"peak RSS {peak_mib():.0f} MiB; blob data {data / 2**20:.0f} MiB, blob diffs {diffs / 2**20:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
