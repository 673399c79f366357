"""Net construction time against the number of layers: it must grow linearly.

Builds a chain Input -> N x (Scale with one learnable blob, ReLU in place) for each N and
prints the seconds per build and per 1,000 layers; a linear construction keeps the last
column about constant (issue 24: a per-blob scan over every layer made 10,001 layers take
231 s). Not a test; best run on an idle machine.

  .venv/bin/python bench/bench_build.py [--layers 1000,4000,10000]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from caffe.net import Net  # noqa: E402
from caffe.proto import caffe_pb2 as pb  # noqa: E402


def chain(n: int) -> pb.NetParameter:
    """Input (1x2x4x4) followed by ``n`` layers: Scale (learnable) and in-place ReLU in turn."""
    param = pb.NetParameter(name=f"chain{n}")
    data = param.layer.add(name="data", type="Input", top=["x0"])
    data.input_param.shape.add(dim=[1, 2, 4, 4])
    top = "x0"
    for i in range(1, n + 1):
        if i % 2:
            lp = param.layer.add(name=f"scale{i}", type="Scale", bottom=[top], top=[f"x{i}"])
            lp.param.add(lr_mult=1 if i % 3 else 0)
            top = f"x{i}"
        else:
            param.layer.add(name=f"relu{i}", type="ReLU", bottom=[top], top=[top])
    return param


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="1000,4000,10000", help="layer counts, comma separated")
    args = ap.parse_args(argv)
    print(f"{'layers':>8} {'build s':>9} {'s per 1k':>9}")
    for n in (int(v) for v in args.layers.split(",")):
        param = chain(n)
        t = time.perf_counter()
        Net(param, "TRAIN")
        dt = time.perf_counter() - t
        print(f"{n + 1:>8} {dt:>9.2f} {dt / (n + 1) * 1000:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
