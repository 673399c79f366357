"""Static or dynamic shapes for a compiled net: extraction of images of a few sizes.

What caffe/compiled.py chose between: one compile per input size (``dynamic=False``, what
``caffe.compiled.compile_net`` does) or one compile whose kernels take any size (the net
exported with dynamic height and width, ``torch.compile(dynamic=True)``, frozen weights too).
Each runs the same list of images (``--sizes``, ``--per-size`` images of each, sizes
interleaved as an image list would be), one forward each, no autograd; printed: the whole
list's time (compiles included), the first call of each size, the steady forward per size
(median of the later calls) and the largest difference from the planned forward. Random
weights (bench/peer_nets.py); not a test.

  .venv/bin/python bench/bench_compile.py [--net narrow] [--sizes 321x321,289x353,385x257] [--per-size 4]
      [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from caffe import threads  # noqa: E402

threads.configure()

import torch  # noqa: E402

import peer_nets  # noqa: E402
from caffe import export as ex  # noqa: E402
from caffe.compiled import Compiled  # noqa: E402


def dynamic_forward(net, blob: str):
    """The net exported with dynamic batch, height and width, compiled once with dynamic shapes
    and frozen weights: ``fn(x)`` gives ``blob``."""
    import torch._inductor.config as config
    saved = net.output_names
    net.output_names = [blob]
    try:
        module = ex.to_module(net, dynamic=True)
    finally:
        net.output_names = saved
    compiled = torch.compile(module, dynamic=True)

    def fn(x):
        with config.patch(freezing=True):
            return compiled(x)[0]
    return fn


def run(name: str, images: list, forward) -> dict:
    """Time ``forward`` over ``images``; per size: first call, later calls."""
    per: dict = {}
    start = time.perf_counter()
    outs = []
    for x in images:
        t = time.perf_counter()
        outs.append(forward(x))
        per.setdefault(tuple(x.shape[2:]), []).append(time.perf_counter() - t)
    return {"name": name, "total": time.perf_counter() - start, "per": per, "outs": outs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", default="narrow", help="a bench/peer_nets.py net (default narrow)")
    ap.add_argument("--sizes", default="321x321,289x353,385x257")
    ap.add_argument("--per-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    net, _, blob = peer_nets.build(args.net, sizes[0])
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, h, w, generator=gen) for _ in range(args.per_size) for h, w in sizes]
    static = Compiled(net)
    dyn = None
    with torch.inference_mode():
        planned = run("planned", images, lambda x: net._forward_planned({"data": x}, set(), frozenset([blob]),
                                                                          False, [blob])[blob])
        results = [planned, run("static", images, lambda x: static.forward({"data": x}, frozenset([blob]))[blob])]
        dyn = dynamic_forward(net, blob)
        results.append(run("dynamic", images, dyn))
    print(f"{args.net}, {len(images)} images of sizes {args.sizes}, {args.threads} thread(s); seconds")
    print(f"{'forward':<8} {'total':>7}  " + "  ".join(f"{'%dx%d' % s:>17}" for s in sizes) + "  max rel diff")
    for r in results:
        cells = []
        for s in sizes:
            t = r["per"][s]
            cells.append(f"{t[0]:7.2f} / {statistics.median(t[1:]) * 1e3:5.0f}ms" if len(t) > 1 else f"{t[0]:7.2f}")
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(r["outs"], planned["outs"]))
        print(f"{r['name']:<8} {r['total']:7.1f}  " + "  ".join(f"{c:>17}" for c in cells) + f"  {diff:.1e}")
    print("(per size: first call / median of the later calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
