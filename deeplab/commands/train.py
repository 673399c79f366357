"""deeplab-train: train a net with a Caffe solver from a solver prototxt, as ``caffe train`` does.

Examples:
  deeplab-train --solver exp/config/solver.prototxt --weights models/vgg16_128.caffemodel \\
      --set EXP=exp --set NET_ID=DeepLab-LargeFOV --gpu 0 --log-file exp/log/train.log
  deeplab-train --solver exp/config/solver.prototxt --snapshot exp/model/train_iter_2000.solverstate --gpu 0
  torchrun --nproc_per_node=4 tools/train.py --solver S.prototxt --gpu all     # 4 GPUs, batch_size each
  deeplab-train --solver S.prototxt --gpu 0,1                                   # the same, self-launched
"""
from __future__ import annotations

import argparse
import os

from deeplab.cli import AMP_CHOICES, default_amp, parse_set, run_main

PATHS_NOTE = ("Paths inside the solver and net prototxts (net, train_net, test_net, snapshot_prefix, "
              "ImageSegData source and root_folder) are relative to the working directory, as in Caffe.")


def build_parser() -> argparse.ArgumentParser:
    """deeplab-train's arguments."""
    p = argparse.ArgumentParser(
        prog="deeplab-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a Caffe solver (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta or Adam; "
                    "lr policies fixed, step, multistep, poly, inv, exp, sigmoid; "
                    "iter_size, clip_gradients, momentum, weight decay with lr_mult/decay_mult) on its train "
                    "net, testing on its test nets every test_interval, writing "
                    "<snapshot_prefix>_iter_N.caffemodel/.solverstate every `snapshot` iterations and at the "
                    "end. Log lines are in Caffe's format (deeplab-parse-log reads them). Ctrl-C (or SIGTERM) "
                    "snapshots and stops (exit code 130); SIGHUP snapshots and goes on; resume with --snapshot. "
                    + PATHS_NOTE,
        epilog=(__doc__ or "").split("\n", 1)[1])
    p.add_argument("--solver", required=True, help="solver prototxt (names the train net: net or train_net)")
    p.add_argument("--weights", help="caffemodel(s) to initialise from, comma-separated; layers copied by name "
                                     "(e.g. the VGG-16 init)")
    p.add_argument("--snapshot", metavar="X.solverstate", help="resume from this solver state")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", default=[],
                   help="fill ${NAME} placeholders in the solver and net prototxts (repeatable)")
    p.add_argument("--gpu", help="GPU id, comma-separated ids (one process each) or 'all'; without it the "
                                 "solver's solver_mode/device_id decide (CPU where CUDA is missing)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU whatever solver_mode says")
    p.add_argument("--seed", type=int, help="random seed (default: the solver's random_seed, else random); "
                                            "weights init, data order, crops, mirrors and dropout follow it")
    p.add_argument("--log-file", metavar="FILE", help="also append the log lines to FILE (e.g. EXP/log/train.log)")
    p.add_argument("--amp", choices=AMP_CHOICES, default=default_amp(),
                   help="mixed precision autocast (weights stay float32): auto (default; $DEEPLAB_AMP overrides it) "
                        "times the net's largest convolution in float32 and bf16 once per machine on the CPU and "
                        "takes the faster (logged; cached in ~/.cache/deeplab/precision.json), float32 on CUDA; "
                        "fp32 (or none) forces float32; bf16 or fp16 autocast")
    p.add_argument("--channels-last", action="store_true", help="use the channels_last memory format")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes per training process (default %(default)s; 0 = in-process)")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="fit training into this many minutes: from iteration 20 on, max_iter is set every 10 "
                        "iterations to what the pace so far allows (at most the solver's; 'poly' follows it) "
                        "and logged; the final snapshot is train_iter_<iterations done>")
    p.add_argument("--strict", action="store_true",
                   help="refuse --weights files none of whose layers is in the net (default: a warning)")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr and no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the solver; 130 when a signal stopped it early."""
    args = build_parser().parse_args(argv)
    from caffe.tool.training import TrainOptions, train
    options = TrainOptions(
        weights=[w for w in (args.weights or "").split(",") if w], snapshot=args.snapshot,
        mapping=parse_set(args.set), gpus=args.gpu, cpu=args.cpu, seed=args.seed, log_file=args.log_file,
        log_stderr=not args.quiet, progress=not args.quiet, amp=args.amp, channels_last=args.channels_last,
        workers=args.workers, strict=args.strict,
        time_budget=None if args.time_budget is None else args.time_budget * 60)
    return 0 if train(args.solver, options) else 130


def run() -> None:
    """Console-script entry point."""
    run_main(main)


if __name__ == "__main__":
    run()
