"""Speed of the way out: exported nets on onnxruntime (CPU) vs the engine, same process.

Each full-width net (random weights, as tests/caffe/test_export.py makes them) is exported with
caffe.export to a temporary ONNX file, checked to agree with the engine, then one forward of
each is timed, interleaved repetitions, in inference mode on the CPU, with the same input.
Prints the median times and the ratio engine / onnxruntime (> 1: onnxruntime is faster).
Not a test; best run on an idle machine.

  .venv/bin/python bench/bench_export.py [--nets largefov,resnet50,segnet] [--reps 3] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tests", "caffe"))

from caffe import export as ex  # noqa: E402
from caffe.net import Net  # noqa: E402
from caffe.prototxt import parse_net  # noqa: E402
from test_export import CRFRNN, LARGEFOV, MAPPING, NETS, randomize, segnet_basic, set_input  # noqa: E402,F401


def build(name: str) -> tuple[Net, dict]:
    """The full-width net and its input."""
    if name == "largefov":
        param, shape = ex.deploy(parse_net(LARGEFOV, MAPPING)).param, (1, 3, 513, 513)
    elif name == "fcn8s":
        param, shape = parse_net(NETS / "fcn8s_voc.prototxt"), (1, 3, 500, 500)
    elif name == "resnet50":
        param, shape = parse_net(NETS / "resnet50.prototxt"), (1, 3, 224, 224)
    elif name == "dilation8":
        param, shape = parse_net(NETS / "dilation8_voc.prototxt"), (1, 3, 900, 900)
    elif name == "segnet":
        param, shape = segnet_basic((1, 3, 360, 480)), (1, 3, 360, 480)
    else:
        raise SystemExit(f"unknown net {name!r}")
    if name in ("fcn8s", "resnet50", "dilation8"):
        param = set_input(param, shape)
    net = Net(param, "TEST")
    randomize(net)
    x = (np.random.default_rng(0).normal(0, 1, shape) * 40).astype(np.float32)
    return net, {net.input_names[0]: x}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="largefov,resnet50,segnet")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    import onnxruntime as ort
    torch.set_num_threads(args.threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    print(f"CPU, {args.threads} threads; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"median of {args.reps} (ratio = engine / onnxruntime)")
    print(f"{'net':<10} {'engine s':>9} {'onnxrt s':>9} {'ratio':>6}")
    for name in args.nets.split(","):
        net, feed = build(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "net.onnx")
            ex.export(net, onnx=path)
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inputs = {k: torch.from_numpy(v) for k, v in feed.items()}
        out = net.output_names[0]
        with torch.inference_mode():
            want = net.forward(inputs)[out].numpy()
        got = session.run([out], feed)[0]
        err = float(np.abs(got - want).max()) / max(1.0, float(np.abs(want).max()))
        engine, onnxrt = [], []
        for _ in range(args.reps):
            t = time.perf_counter()
            with torch.inference_mode():
                net.forward(inputs)
            engine.append(time.perf_counter() - t)
            t = time.perf_counter()
            session.run([out], feed)
            onnxrt.append(time.perf_counter() - t)
        e, o = statistics.median(engine), statistics.median(onnxrt)
        print(f"{name:<10} {e:9.3f} {o:9.3f} {e / o:6.2f}   (outputs agree to {err:.1e} of their scale)")


if __name__ == "__main__":
    main()
