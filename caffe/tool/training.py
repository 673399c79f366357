"""Run a solver prototxt to the end: what ``caffe train`` does (tools/caffe.cpp's train()).

``train(solver_path, TrainOptions(...))`` reads the solver (filling ``${NAME}``
placeholders), picks the device as Caffe does (``gpus`` flag, else the solver's
solver_mode/device_id; on a machine without CUDA a GPU solver_mode falls back to the CPU
with a warning), seeds, builds the train and test nets, copies ``weights`` by layer name,
feeds ImageSegData layers and runs caffe.solvers.solver.Solver. Several GPUs: one process per GPU,
started here (as torchrun would start them) unless a launcher already did; ``batch_size``
is per process and diffs are averaged, as Caffe's multi-GPU training does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import CaffeError


@dataclass
class TrainOptions:
    """The knobs of one training run (``caffe train``'s flags and deeplab-train's extras)."""

    weights: list[str] = field(default_factory=list)   # caffemodels to copy layers from, in order
    snapshot: str | None = None                        # .solverstate to resume from
    mapping: dict[str, str] = field(default_factory=dict)  # ${NAME} placeholder values
    gpus: str | None = None        # "0", "0,1", "all"; empty: solver_mode/device_id decide
    cpu: bool = False              # the CPU whatever solver_mode says
    seed: int | None = None        # default: the solver's random_seed, else random
    level: int | None = None       # sets train_state.level (caffe train always sets it; None keeps it)
    stages: list[str] = field(default_factory=list)  # added to train_state.stage
    log_file: str | None = None    # also append the log lines here
    log_stderr: bool = True
    progress: bool = True
    amp: str | None = None         # None/"fp32"/"none" (float32), "bf16", "fp16", or "auto" (caffe.precision)
    channels_last: bool = False
    workers: int = 0               # data loading processes per training process
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    time_budget: float | None = None  # seconds of training; max_iter is lowered to fit (deeplab-train's)
    strict: bool = False           # a weights file matching no layer of the net is an error, not a warning


def check_options(options: TrainOptions) -> None:
    """The checks caffe.cpp makes before reading anything."""
    from ..solvers.solver import SIGNAL_EFFECTS
    if options.weights and options.snapshot:
        raise CaffeError("give a snapshot to resume training or weights to finetune, not both")
    if options.snapshot and not os.path.isfile(options.snapshot):
        raise CaffeError(f"snapshot {options.snapshot}: no such file")
    for name in ("sigint_effect", "sighup_effect"):
        if getattr(options, name) not in SIGNAL_EFFECTS:
            raise CaffeError(f"{name} must be one of {', '.join(SIGNAL_EFFECTS)}; got {getattr(options, name)!r}")
    if options.time_budget is not None and not options.time_budget > 0:
        raise CaffeError(f"time budget must be > 0 seconds, got {options.time_budget}")
    from ..precision import AMP_CHOICES
    if options.amp not in (None,) + AMP_CHOICES:
        raise CaffeError(f"amp must be one of {', '.join(AMP_CHOICES)}; got {options.amp!r}")


def choose_gpus(options: TrainOptions, param) -> tuple[list[int], str | None]:
    """GPU ids to train on ([] = the CPU) and a warning to log, if any.

    As caffe.cpp: the ``gpus`` flag wins; without it a solver with ``solver_mode: GPU`` uses
    its ``device_id`` (0 when unset). Unlike Caffe, a GPU solver on a machine without CUDA runs
    on the CPU (with a warning), so the release's solvers run anywhere.
    """
    import torch
    from ..common import gpu_ids
    if options.cpu:
        return [], None
    if options.gpus:
        return gpu_ids(options.gpus), None
    if param.solver_mode == param.GPU:
        if torch.cuda.is_available():
            return gpu_ids(str(int(param.device_id))), None
        return [], "the solver asks for solver_mode GPU but CUDA is not available: using the CPU"
    return [], None


def train(solver_path: str, options: TrainOptions | None = None) -> bool:
    """Run the solver at ``solver_path`` to max_iter (or a stop signal); True when it finished,
    False when a signal stopped it early (after a snapshot)."""
    import numpy as np
    import torch
    from ..solvers import parallel as distributed
    from ..data.stream import NetFeed
    from ..prototxt import parse_solver
    from ..solvers.update import check_solver
    from ..util.files import check_output_dir, check_output_file, remove_stale_temps
    from ..solvers.solver import CaffeLog, Solver, build_nets, snapshot_prefix

    options = options or TrainOptions()
    check_options(options)
    param = parse_solver(solver_path, options.mapping)
    check_solver(param)
    if options.level is not None:
        param.train_state.level = options.level
    param.train_state.stage.extend(s for s in options.stages if s)
    gpus, warning = choose_gpus(options, param)
    if len(gpus) > 1 and not distributed.launched():
        return _spawn(solver_path, options, len(gpus))
    param.snapshot_prefix = snapshot_prefix(param, solver_path)
    snap_dir = os.path.dirname(param.snapshot_prefix) or "."
    check_output_dir(snap_dir, "snapshot folder")  # before hours of work
    # temporary snapshot files a killed run left (a snapshot is written whole or not at all)
    remove_stale_temps(snap_dir, prefix=os.path.basename(param.snapshot_prefix) + "_iter_")
    if options.log_file:
        check_output_file(options.log_file, "log file")
    d = distributed.setup(bool(gpus), gpus or None)
    log = CaffeLog(options.log_file, stderr=options.log_stderr) if d.rank == 0 else None
    solver, feeds, success = None, [], False
    try:
        if log:
            if warning:
                log("caffe.cpp:190", warning, "W")
            if d.device == "cpu":
                log("caffe.cpp:197", "Use CPU.")
            else:
                log("caffe.cpp:204", f"Using GPUs {', '.join(map(str, gpus))}")
                for g in gpus:
                    log("caffe.cpp:209", f"GPU {g}: {torch.cuda.get_device_name(g)}")
        seed = options.seed if options.seed is not None else int(param.random_seed)
        if seed < 0:
            seed = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
        if d.world > 1:
            seed = distributed.broadcast_int(seed, d.device)
        if log:
            log("caffe.cpp:218", f"Random seed {seed}" + (f", {d.world} processes" if d.world > 1 else ""))
            log("solver.cpp:48", "Initializing solver from parameters: \n" + str(param).rstrip())
        torch.manual_seed(seed)  # fillers draw from it: the init follows the seed
        train_net, tests = build_nets(param, options.mapping)
        weights = [] if options.snapshot else [w for w in (options.weights or list(param.weights)) if w]
        for w in weights:
            report = train_net.copy_from(w)
            if not report["copied"] and not report["skipped"]:
                what = (f"none of the {len(report['ignored'])} layer(s) in {w} matches a layer of the net "
                        "(weights for another net?)")
                if options.strict:
                    raise CaffeError(what)
                if log:
                    log("caffe.cpp:143", what + ": every layer keeps its fillers", "W")
            if log:
                log("caffe.cpp:143", f"Finetuning from {w}: copied {len(report['copied'])} layers"
                    + (f", kept fillers for {report['skipped']}" if report["skipped"] else "")
                    + (f", ignored {len(report['ignored'])} layers not in the net" if report["ignored"] else ""))
        for net in [train_net] + tests:
            if options.channels_last:
                net.to(d.device, memory_format=torch.channels_last)
            else:
                net.to(d.device)
        from ..precision import resolve_amp
        amp = options.amp
        if d.rank == 0 or amp != "auto":
            amp = resolve_amp(amp, train_net, d.device, channels_last=options.channels_last,
                              say=(lambda line: log("precision.py:0", line)) if log else None)
        if options.amp == "auto" and d.world > 1:   # rank 0 measured; every process autocasts alike
            codes = [None, "bf16", "fp16"]
            amp = codes[distributed.broadcast_int(codes.index(amp) if d.rank == 0 else 0, d.device)]
        if d.world > 1:
            distributed.broadcast_params([p.param for p in train_net.learnable_params()])
        pin = d.device.startswith("cuda")
        feeds.append(NetFeed(train_net, seed, d.rank, d.world, options.workers, pin))
        if d.rank == 0:
            feeds += [NetFeed(t, seed, 0, 1, min(options.workers, 1), pin) for t in tests]
        solver = Solver(param, train_net, feeds[0], tests if d.rank == 0 else [], feeds[1:], seed=seed,
                        device=d.device, dist=d, log=log, amp=amp, channels_last=options.channels_last,
                        progress=options.progress)
        solver.sigint_effect, solver.sighup_effect = options.sigint_effect, options.sighup_effect
        solver.time_budget = options.time_budget
        if log and options.snapshot:
            log("caffe.cpp:235", f"Resuming from {options.snapshot}")
        if log:
            log("caffe.cpp:239", "Starting Optimization")
        solver.solve(options.snapshot)
        if log:
            log("caffe.cpp:250", "Optimization Done.")
        success = True
    finally:
        for f in feeds:
            f.close()
        if log:
            log.close()
        if solver is not None:
            solver.release()   # the DistributedDataParallel wrapper goes before its process group
        distributed.cleanup(success)
    return not solver.stopped_early


# ------------------------------------------------------------------ one process per GPU
STOPPED_EARLY = 130  # a spawned process's exit status when a signal stopped training


def _spawned(index: int, solver_path: str, options: TrainOptions, n: int, port: int, errors) -> None:
    """One training process of ``n``: join the group as torchrun's environment says, train,
    and report a CaffeError through ``errors`` (exit 2) or an early stop (exit 130)."""
    import sys
    os.environ.update(RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE=str(n),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        finished = train(solver_path, options)
    except CaffeError as e:
        errors.put(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(STOPPED_EARLY)
    if not finished:
        sys.exit(STOPPED_EARLY)


def _spawn(solver_path: str, options: TrainOptions, n: int) -> bool:
    """Start one training process per GPU and wait for them (what torchrun would do)."""
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_spawned, args=(solver_path, options, n, port, errors), nprocs=n)
    except mp.ProcessExitedException as e:
        if not errors.empty():
            raise CaffeError(errors.get()) from None
        if e.exit_code == STOPPED_EARLY:
            return False
        raise CaffeError(f"training process {e.error_index} of {n} exited with status {e.exit_code}") from None
    return True
