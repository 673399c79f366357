#!/usr/bin/env python
"""Train a net with Caffe's SGD from a solver prototxt, as ``caffe train`` does.

Examples:
  tools/train.py --solver exp/config/solver.prototxt --weights models/vgg16_128.caffemodel \\
      --set EXP=exp --set NET_ID=DeepLab-LargeFOV --gpu 0 --log-file exp/log/train.log
  tools/train.py --solver exp/config/solver.prototxt --snapshot exp/model/train_iter_2000.solverstate --gpu 0
  torchrun --nproc_per_node=4 tools/train.py --solver S.prototxt --gpu all     # 4 GPUs, batch_size each
  tools/train.py --solver S.prototxt --gpu 0,1                                  # the same, self-launched
"""
from __future__ import annotations

import argparse
import os
import sys

from deeplab import DeepLabError
from deeplab.cli import parse_set, run_main

PATHS_NOTE = ("Paths inside the solver and net prototxts (net, train_net, test_net, snapshot_prefix, "
              "ImageSegData source and root_folder) are relative to the working directory, as in Caffe.")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a Caffe solver (SGD; lr policies fixed, step, multistep, poly, inv, exp, sigmoid; "
                    "iter_size, clip_gradients, momentum, weight decay with lr_mult/decay_mult) on its train "
                    "net, testing on its test nets every test_interval, writing "
                    "<snapshot_prefix>_iter_N.caffemodel/.solverstate every `snapshot` iterations and at the "
                    "end. Log lines are in Caffe's format (tools/parse_log.py reads them). Ctrl-C (or SIGTERM) snapshots "
                    "and stops (exit code 130); SIGHUP snapshots and goes on; resume with --snapshot. " + PATHS_NOTE,
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
    p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision autocast (weights stay float32)")
    p.add_argument("--channels-last", action="store_true", help="use the channels_last memory format")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loading processes per training process (default %(default)s; 0 = in-process)")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr and no progress bar")
    return p


def _gpu_choice(args, param) -> tuple[bool, list[int] | None]:
    """(use CUDA, GPU ids or None for all visible ones)."""
    import torch
    if args.cpu:
        return False, None
    if args.gpu is None:
        if param.solver_mode == 1 and torch.cuda.is_available():  # GPU
            return True, [int(param.device_id)]
        return False, None
    if args.gpu == "all":
        return True, None
    try:
        return True, [int(g) for g in args.gpu.split(",")]
    except ValueError:
        raise DeepLabError(f"--gpu expects an id, ids separated by commas, or 'all'; got {args.gpu!r}") from None


def _spawned(index: int, argv: list[str], n: int, port: int) -> None:
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(n),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run_main(main, argv)


def _spawn(argv: list[str], n: int) -> int:
    """One training process per GPU, as torchrun would start them."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(_spawned, args=(argv, n, port), nprocs=n)
    except mp.ProcessExitedException as e:
        return e.exit_code if e.exit_code and e.exit_code > 0 else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch
    import caffe.distributed as distributed
    from caffe.imageseg import NetFeed
    from caffe.prototxt import parse_solver
    from caffe.sgd import check_solver
    from caffe.solver import CaffeLog, Solver, build_nets, snapshot_prefix

    if args.weights and args.snapshot:
        raise DeepLabError("give --snapshot to resume or --weights to finetune, not both")
    if args.snapshot and not os.path.isfile(args.snapshot):
        raise DeepLabError(f"--snapshot {args.snapshot}: no such file")
    mapping = parse_set(args.set)
    param = parse_solver(args.solver, mapping)
    check_solver(param)
    use_cuda, ids = _gpu_choice(args, param)
    if use_cuda and not distributed.launched():
        n = len(ids) if ids is not None else torch.cuda.device_count()
        if n > 1:
            return _spawn(argv, n)
    d = distributed.setup(use_cuda, ids)
    log = None
    if d.rank == 0:
        log = CaffeLog(args.log_file, stderr=not args.quiet)
    try:
        seed = args.seed if args.seed is not None else int(param.random_seed)
        if seed < 0:
            seed = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
        if d.world > 1:
            seed = distributed.broadcast_int(seed, d.device)
        param.snapshot_prefix = snapshot_prefix(param, args.solver)
        if log:
            log("caffe.cpp:218", f"Using {d.device}" + (f" x {d.world} processes" if d.world > 1 else "")
                + f", random seed {seed}")
            log("solver.cpp:48", "Initializing solver from parameters: \n" + str(param).rstrip())
        torch.manual_seed(seed)  # fillers draw from it: the init follows the seed
        train, tests = build_nets(param, mapping)
        weights = [w for w in (args.weights.split(",") if args.weights else list(param.weights)) if w]
        for w in weights:
            report = train.copy_from(w)
            if log:
                log("caffe.cpp:143", f"Finetuning from {w}: copied {len(report['copied'])} layers"
                    + (f", kept fillers for {report['skipped']}" if report["skipped"] else "")
                    + (f", ignored {len(report['ignored'])} layers not in the net" if report["ignored"] else ""))
        for net in [train] + tests:
            if args.channels_last:
                net.to(d.device, memory_format=torch.channels_last)
            else:
                net.to(d.device)
        if d.world > 1:
            distributed.broadcast_params([p.param for p in train.learnable_params()])
        pin = d.device.startswith("cuda")
        feed = NetFeed(train, seed, d.rank, d.world, args.workers, pin)
        test_feeds = [NetFeed(t, seed, 0, 1, min(args.workers, 1), pin) for t in tests] if d.rank == 0 else []
        solver = Solver(param, train, feed, tests if d.rank == 0 else [], test_feeds, seed=seed,
                        device=d.device, dist=d, log=log, amp=args.amp, channels_last=args.channels_last,
                        progress=not args.quiet)
        try:
            solver.solve(args.snapshot)
        finally:
            for f in [feed] + test_feeds:
                f.close()
    finally:
        if log:
            log.close()
        distributed.cleanup()
    return 130 if solver.stopped_early else 0


if __name__ == "__main__":
    run_main(main)
