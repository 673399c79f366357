"""Forward speed of DeepLab-LargeFOV through the engine vs the hand-written module.

Builds prototxt/voc12/DeepLab-LargeFOV/test.prototxt with the engine (minus its MatWrite
layer), copies its weights into bench/reference.py's LargeFOV, checks both give the same
scores, then times one forward (fc8 and the Interp x8 upsampling) of each on the same input,
interleaved repetitions, in inference mode, and prints the median times, the ratio of the
medians engine / reference (target: <= 1.10), and the ratio of the fastest runs (less
sensitive to other work on a shared machine). Not a test; best run on an idle machine.

  .venv/bin/python bench/bench_engine.py [--sizes 513,321] [--reps 5] [--batch 1] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.reference import LargeFOV  # noqa: E402
from caffe.net import Net  # noqa: E402
from caffe.prototxt import parse_net  # noqa: E402

PROTOTXT = os.path.join(ROOT, "prototxt", "voc12", "DeepLab-LargeFOV", "test.prototxt")
MAPPING = {"DATA_ROOT": ".", "LIST_DIR": ".", "TEST_SET": "bench", "FEATURE_DIR": ".", "NUM_LABELS": "21"}


def engine_net(device, channels_last: bool) -> Net:
    """The LargeFOV test net without its MatWrite layer (it would write files)."""
    param = parse_net(PROTOTXT, MAPPING)
    keep = [lp for lp in param.layer if lp.type != "MatWrite"]
    del param.layer[:]
    param.layer.extend(keep)
    net = Net(param, "TEST").to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def timed(fn, x, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def build_parser() -> argparse.ArgumentParser:
    """The command line (tools/gpu_check.sh's plan is checked with it)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="513,321", help="square input sizes, comma separated (default 513,321)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions of each, interleaved (default 5)")
    ap.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                    help="keep NCHW memory layout (default: channels_last for both)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = engine_net(device, args.channels_last)
    ref = LargeFOV(21).to(device).eval()
    ref.load_from_net(net)
    if args.channels_last:
        ref = ref.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    def run_engine(x):
        return net({"data": x}, outputs=["fc8_interp"])["fc8_interp"]

    def run_ref(x):
        return ref.upsample(ref(x))

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"channels_last {args.channels_last}, batch {args.batch}, {args.reps} interleaved reps")
    print(f"{'input':>9}  {'output':>9}  {'engine ms':>10}  {'reference ms':>12}  {'ratio':>6}  "
          f"{'min ratio':>9}  max|diff|")
    worst = 0.0
    with torch.inference_mode():
        for size in [int(s) for s in args.sizes.split(",")]:
            x = (torch.randn(args.batch, 3, size, size, device=device) * 60).contiguous(memory_format=fmt)
            a, b = run_engine(x), run_ref(x)                     # warm-up, and the same answer
            diff = (a - b).abs().max().item()
            times = {"engine": [], "ref": []}
            for r in range(args.reps):
                order = [("engine", run_engine), ("ref", run_ref)]
                for name, fn in order if r % 2 == 0 else order[::-1]:
                    times[name].append(timed(fn, x, device))
            te, tr = statistics.median(times["engine"]), statistics.median(times["ref"])
            worst = max(worst, te / tr)
            fastest = min(times["engine"]) / min(times["ref"])
            print(f"{size:>4}x{size:<4}  {a.shape[2]:>4}x{a.shape[3]:<4}  {te * 1e3:>10.1f}  {tr * 1e3:>12.1f}  "
                  f"{te / tr:>6.3f}  {fastest:>9.3f}  {diff:.2e}")
    print(f"worst ratio of medians engine/reference: {worst:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
