"""Training throughput of DeepLab-LargeFOV: the engine's solver vs a hand-written PyTorch loop.

Engine: prototxt/voc12/DeepLab-LargeFOV/train.prototxt built by caffe.net.Net and trained
by caffe.solvers.solver.Solver (Caffe's SGD with lr_mult/decay_mult, momentum, weight decay, label
shrink by Interp, SoftmaxWithLoss, SegAccuracy). Reference: bench/reference.py's LargeFOV with
the same weights, torch.optim.SGD with per-layer lr / decay groups, labels subsampled by 8,
F.cross_entropy. Both run the same batches (random images and labels, or with --pipeline the
engine's ImageSegData loader over generated JPEGs, for both), interleaved repetitions of
--iters iterations each; prints images/s of each and the ratio engine / reference (target:
>= 0.90, i.e. within 10%). Not a test; best run on an idle machine.

  .venv/bin/python bench/bench_train.py [--batch 2] [--crop 321] [--iters 1] [--reps 3] \\
      [--device cpu|cuda] [--amp bf16] [--channels-last] [--pipeline --workers 4]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.reference import LargeFOV  # noqa: E402
from caffe.net import Net  # noqa: E402
from caffe.prototxt import parse_net, parse_solver  # noqa: E402
from caffe.solvers.solver import Solver  # noqa: E402

VARIANT = os.path.join(ROOT, "prototxt", "voc12", "DeepLab-LargeFOV")


def make_images(folder: str, n: int, rng) -> None:
    """VOC-sized JPEGs (500x375) with random labels, and train.txt listing them."""
    import cv2
    from deeplab.labels import write_label
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    os.makedirs(os.path.join(folder, "lab"), exist_ok=True)
    lines = []
    for i in range(n):
        img = cv2.GaussianBlur(rng.integers(0, 256, (375, 500, 3)).astype(np.uint8), (7, 7), 0)
        cv2.imwrite(os.path.join(folder, "img", f"{i}.jpg"), img)
        write_label(os.path.join(folder, "lab", f"{i}.png"), rng.integers(0, 21, (375, 500)).astype(np.uint8))
        lines.append(f"/img/{i}.jpg /lab/{i}.png")
    with open(os.path.join(folder, "train.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def engine(args, device, data_dir):
    """The LargeFOV train net and a Solver for it (no display, no snapshots)."""
    mapping = {"DATA_ROOT": data_dir, "LIST_DIR": data_dir, "TRAIN_SET": "train", "NUM_LABELS": "21",
               "NET_ID": "DeepLab-LargeFOV", "EXP": data_dir}
    param = parse_net(os.path.join(VARIANT, "train.prototxt"), mapping)
    for lp in param.layer:
        if lp.type == "ImageSegData":
            lp.image_data_param.batch_size = args.batch
            lp.transform_param.crop_size = args.crop
    net = Net(param, "TRAIN").to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    solver_param = parse_solver(os.path.join(VARIANT, "solver.prototxt"), mapping)
    solver_param.display = solver_param.snapshot = 0
    return net, solver_param


def reference(net, device, channels_last: bool):
    """The hand-written module with the engine's weights, and its optimizer (Caffe's
    lr_mult / decay_mult as parameter groups)."""
    model = LargeFOV(21).to(device).train()
    model.load_from_net(net)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = []
    for name in model.conv_names():
        conv = getattr(model, name)
        big = name == "fc8_voc12"
        groups.append({"params": [conv.weight], "lr": 0.001 * (10 if big else 1), "weight_decay": 0.0005})
        groups.append({"params": [conv.bias], "lr": 0.001 * (20 if big else 2), "weight_decay": 0.0})
    return model, torch.optim.SGD(groups, lr=0.001, momentum=0.9)


def build_parser() -> argparse.ArgumentParser:
    """The command line (tools/gpu_check.sh's plan is checked with it)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2, help="images per iteration (default 2)")
    ap.add_argument("--crop", type=int, default=321, help="crop size (default 321)")
    ap.add_argument("--iters", type=int, default=1, help="iterations per timed repetition (default 1)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of each (default 3)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--amp", choices=("bf16", "fp16"), help="autocast both sides")
    ap.add_argument("--channels-last", action="store_true", help="channels_last for both sides")
    ap.add_argument("--pipeline", action="store_true", help="feed both from the ImageSegData loader over "
                                                              "generated JPEGs (data pipeline included)")
    ap.add_argument("--workers", type=int, default=2, help="loader processes with --pipeline (default 2)")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        n_images = max(8, args.batch * args.iters * (2 * args.reps + 2))
        make_images(tmp, n_images if args.pipeline else 1, rng)
        net, solver_param = engine(args, device, tmp)
        model, opt = reference(net, device, args.channels_last)
        if args.pipeline:
            from caffe.data.stream import NetFeed
            feed = NetFeed(net, seed=0, workers=args.workers, pin_memory=device.type == "cuda")
        else:
            x = torch.randn(args.batch, 3, args.crop, args.crop) * 60
            y = torch.from_numpy(rng.integers(0, 21, (args.batch, 1, args.crop, args.crop)).astype(np.float32))
            feed = lambda b: {"data": x, "label": y}  # noqa: E731
        solver = Solver(solver_param, net, feed, device=device, amp=args.amp,
                        channels_last=args.channels_last, progress=False)
        amp = torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16) \
            if args.amp else contextlib.nullcontext()
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
        counter = {"ref": 0}

        def run_engine():
            solver.step(args.iters)

        def run_ref():
            for _ in range(args.iters):
                batch = feed(counter["ref"])
                counter["ref"] += 1
                data = batch["data"].to(device, non_blocking=True).contiguous(memory_format=fmt)
                label = batch["label"].to(device, non_blocking=True)[:, 0, ::8, ::8].long()
                opt.zero_grad(set_to_none=True)
                with amp:
                    scores = model(data)
                loss = F.cross_entropy(scores.float(), label, ignore_index=255)
                loss.backward()
                opt.step()

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, batch {args.batch}, "
              f"crop {args.crop}, amp {args.amp}, channels_last {args.channels_last}, pipeline {args.pipeline}, "
              f"{args.reps} interleaved reps of {args.iters} iteration(s)")
        run_engine()  # warm-up
        run_ref()
        times = {"engine": [], "ref": []}
        for r in range(args.reps):
            order = [("engine", run_engine), ("ref", run_ref)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                times[name].append(timed(fn))
        if args.pipeline:
            feed.close()
    images = args.batch * args.iters
    te, tr = statistics.median(times["engine"]), statistics.median(times["ref"])
    print(f"engine    {images / te:8.3f} images/s  (median {te:.2f} s per {args.iters} iteration(s); "
          f"all {[round(t, 2) for t in times['engine']]})")
    print(f"reference {images / tr:8.3f} images/s  (median {tr:.2f} s; all {[round(t, 2) for t in times['ref']]})")
    print(f"throughput ratio engine/reference: {tr / te:.3f} (median), "
          f"{min(times['ref']) / min(times['engine']):.3f} (fastest runs); target >= 0.90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
