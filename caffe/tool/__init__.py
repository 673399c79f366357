"""The ``caffe`` command: ``caffe train|test|time|device_query`` with Caffe's flags.

Flags are read as gflags reads them (``--solver=x``, ``-solver=x``, ``--solver x``,
``-solver x``), with Caffe's names and defaults (tools/caffe.cpp). Log lines are glog's, on
stderr; with ``GLOG_log_dir`` set (run_pascal.sh sets it) or ``--log_dir``, also in
``<dir>/caffe.<host>.<user>.log.INFO.<date>-<time>.<pid>`` with a ``caffe.INFO`` link, as
glog names them. A bad flag, file or net is one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import os
import sys

from .. import CaffeError

USAGE = """command line brew
usage: caffe <command> <args>

commands:
  train           train or finetune a model
  test            score a model
  device_query    show GPU diagnostic information
  time            benchmark model execution time
  export          write a model as ONNX and/or a torch.export program
"""

# name: (default, help), as tools/caffe.cpp defines them (log_dir is glog's).
FLAGS: dict[str, tuple[object, str]] = {
    "gpu": ("", "Optional; run in GPU mode on given device IDs separated by ','. Use '-gpu all' to run on all "
                "available GPUs. The effective training batch size is multiplied by the number of devices."),
    "solver": ("", "The solver definition protocol buffer text file."),
    "model": ("", "The model definition protocol buffer text file."),
    "phase": ("", "Optional; network phase (TRAIN or TEST). Default TEST for 'test' and 'time --compile', TRAIN for 'time'."),
    "level": (0, "Optional; network level."),
    "stage": ("", "Optional; network stages (not to be confused with phase), separated by ','."),
    "snapshot": ("", "Optional; the snapshot solver state to resume training."),
    "weights": ("", "Optional; the pretrained weights to initialize finetuning, separated by ','. Cannot be "
                    "set simultaneously with snapshot."),
    "iterations": (50, "The number of iterations to run."),
    "sigint_effect": ("stop", "Optional; action to take when a SIGINT signal is received: snapshot, stop or none."),
    "sighup_effect": ("snapshot", "Optional; action to take when a SIGHUP signal is received: snapshot, stop or "
                                  "none."),
    "log_dir": ("", "glog's: also write the log to a file in this folder (default: $GLOG_log_dir)."),
    "onnx": ("", "export: write the model as ONNX to this file."),
    "torch": ("", "export: write the model as a torch.export program (.pt2) to this file."),
    "deploy": (False, "export: drop data, loss, accuracy and MatWrite layers, an Input in front."),
    "shape": ("", "export: Input shapes, name:N,C,H,W separated by ';' (default: the data layer's)."),
    "compile": (False, "time: the TEST forward without autograd compiled by torch.compile (inductor, frozen "
                       "weights), timed whole: the first (compiling) forward apart, then compiled and uncompiled "
                       "averages; the phase defaults to TEST."),
}


INT32 = (-2 ** 31, 2 ** 31 - 1)   # the range gflags accepts for an int32 flag


def usage() -> str:
    """The usage message with every flag, as gflags prints it."""
    lines = [USAGE, "  Flags from tools/caffe.cpp:"]
    for name, (default, text) in FLAGS.items():
        kind = "bool" if isinstance(default, bool) else "int32" if isinstance(default, int) else "string"
        shown = str(default).lower() if isinstance(default, bool) else default if isinstance(default, int) \
            else f'"{default}"'
        lines.append(f"    -{name} ({text}) type: {kind} default: {shown}")
    return "\n".join(lines) + "\n"


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, object]]:
    """gflags' command line: ``-name=value``, ``--name=value``, ``-name value``; ``--`` ends
    the flags. Returns (the other arguments, every flag's value)."""
    flags = {name: default for name, (default, _) in FLAGS.items()}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            rest += argv[i:]
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in ("help", "h", "helpshort", "helpfull"):
            flags["help"] = True
            continue
        if name == "version":
            flags["version"] = True
            continue
        if name.startswith("no") and isinstance(FLAGS.get(name[2:], (None,))[0], bool) and not eq:
            flags[name[2:]] = False   # gflags' --noflag
            continue
        if name not in FLAGS:
            raise CaffeError(f"unknown command line flag '{name}' (caffe --help lists them)")
        if isinstance(FLAGS[name][0], bool):
            if value.lower() not in ("", "true", "false", "1", "0") or (eq and not value):
                raise CaffeError(f"illegal value '{value}' specified for bool flag '{name}'")
            flags[name] = not eq or value.lower() in ("true", "1")
            continue
        if not eq:
            if i >= len(argv):
                raise CaffeError(f"flag '{name}' is missing its argument")
            value = argv[i]
            i += 1
        if isinstance(FLAGS[name][0], int):
            try:
                flags[name] = int(value)
            except ValueError:
                flags[name] = None
            if flags[name] is None or not INT32[0] <= flags[name] <= INT32[1]:   # gflags' range check too
                raise CaffeError(f"illegal value '{value}' specified for int32 flag '{name}'")
        else:
            flags[name] = value
    return rest, flags


def glog_path(log_dir: str) -> str | None:
    """A new log file in ``log_dir`` named as glog names them; ``caffe.INFO`` links to it.
    A folder that cannot hold it (below a file, not writable, a full disk) is reported once
    on stderr and None returned: as glog, the run goes on logging to stderr only."""
    import getpass
    import socket
    import time
    from ..util.files import WriteError, check_output_dir
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "invalid-user"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"caffe.{socket.gethostname()}.{user}.log.INFO.{stamp}.{os.getpid()}"
    try:
        check_output_dir(log_dir, "log folder")
    except WriteError as e:
        from ..solvers.solver import CaffeLog
        CaffeLog(None)("logging.cc:0", f"COULD NOT CREATE LOGFILE {name}: {e}; logging to stderr only", "W")
        return None
    link = os.path.join(log_dir, "caffe.INFO")
    try:
        tmp = f"{link}.{os.getpid()}.tmp"
        os.symlink(name, tmp)
        os.replace(tmp, link)
    except OSError:   # the link is a convenience (glog too goes on without it)
        if os.path.islink(tmp):
            os.unlink(tmp)
    return os.path.join(log_dir, name)


def _phase(flags, default: str) -> str:
    phase = flags["phase"] or default
    if phase not in ("TRAIN", "TEST"):
        raise CaffeError(f'phase must be "TRAIN" or "TEST", got "{phase}"')
    return phase


def _stages(flags) -> list[str]:
    return [s for s in str(flags["stage"]).split(",") if s]


def _workers() -> int:
    return min(4, os.cpu_count() or 1)


def train(flags, log_file) -> int:
    """Train or finetune a model (caffe.tool.training.train); 0 when done or stopped by a signal."""
    from .training import TrainOptions, train as run_solver
    if not flags["solver"]:
        raise CaffeError("need a solver definition to train (--solver=solver.prototxt)")
    options = TrainOptions(
        weights=[w for w in str(flags["weights"]).split(",") if w], snapshot=flags["snapshot"] or None,
        gpus=flags["gpu"] or None, level=flags["level"], stages=_stages(flags), log_file=log_file,
        progress=False, workers=_workers(), sigint_effect=flags["sigint_effect"],
        sighup_effect=flags["sighup_effect"])
    run_solver(flags["solver"], options)
    return 0  # as Caffe: a run stopped by SIGINT has snapshotted and ends normally


def test(flags, log) -> int:
    """Score a model (caffe.tool.scoring.score)."""
    from .scoring import score
    if not flags["model"]:
        raise CaffeError("need a model definition to score (--model=test.prototxt)")
    score(flags["model"], [w for w in str(flags["weights"]).split(",") if w], flags["iterations"],
          phase=_phase(flags, "TEST"), level=flags["level"], stages=_stages(flags), gpus=flags["gpu"] or None,
          workers=_workers(), log=log)
    return 0


def time(flags, log) -> int:
    """Benchmark a model's forward and backward, layer by layer (caffe.tool.timing.time_net)."""
    from .timing import time_net
    if not flags["model"]:
        raise CaffeError("need a model definition to time (--model=net.prototxt)")
    time_net(flags["model"], flags["iterations"], phase=_phase(flags, "TEST" if flags["compile"] else "TRAIN"),
             level=flags["level"], stages=_stages(flags), gpus=flags["gpu"] or None, workers=_workers(), log=log,
             compile=flags["compile"])
    return 0


def device_query(flags, log) -> int:
    """Show each GPU's properties (all visible ones without --gpu)."""
    import torch
    from ..common import gpu_ids
    from ..solvers.parallel import device_query as describe
    log("caffe.cpp:138", f"Querying GPUs {flags['gpu']}")
    ids = gpu_ids(flags["gpu"] or ("all" if torch.cuda.is_available() else ""))
    if not ids:
        log("caffe.cpp:138", f"No GPU: CUDA is not available to PyTorch {torch.__version__} on this machine")
    for g in ids:
        for line in describe(g):
            log("common.cpp:178", line)
    return 0


def export(flags, log) -> int:
    """Write a model as ONNX and/or a torch.export program (caffe.export.run_command)."""
    from ..export import run_command
    return run_command(flags, log)


COMMANDS = {"device_query": device_query, "export": export, "test": test, "time": time, "train": train}


def main(argv: list[str] | None = None) -> int:
    """Run ``caffe <command> <flags>``; returns the exit status."""
    rest, flags = parse_flags(list(sys.argv[1:] if argv is None else argv))
    if flags.get("help"):
        print(usage(), end="")
        return 0
    if flags.get("version"):
        from .. import __version__
        print(f"caffe version {__version__}")
        return 0
    if len(rest) != 1:
        print(usage(), end="", file=sys.stderr)
        return 2
    command = COMMANDS.get(rest[0])
    if command is None:
        raise CaffeError(f"unknown action: {rest[0]} (available caffe actions: {', '.join(COMMANDS)})")
    from ..solvers.solver import SIGNAL_EFFECTS
    for name in ("sigint_effect", "sighup_effect"):
        if flags[name] not in SIGNAL_EFFECTS:
            raise CaffeError(f'invalid signal effect "{flags[name]}" was specified for --{name} '
                             f"(give {', '.join(SIGNAL_EFFECTS)})")
    log_dir = flags["log_dir"] or os.environ.get("GLOG_log_dir", "")
    log_file = glog_path(log_dir) if log_dir else None
    if command is train:
        return train(flags, log_file)
    from ..solvers.solver import CaffeLog
    log = CaffeLog(log_file)
    try:
        return command(flags, log)
    finally:
        log.close()


def run_main(main_fn, argv: list[str] | None = None, user_errors: tuple = (CaffeError,)) -> None:
    """Run a command's ``main``; a user error (``user_errors``: CaffeError here, the pipeline adds
    the CRF library's) prints ``error: ...`` on one line and exits 2, Ctrl-C exits 130. Every
    command of the project (deeplab's too) ends here, after the thread policy (caffe.threads)."""
    from .. import threads
    threads.configure()
    try:
        code = main_fn(argv)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def run() -> None:
    """Console-script entry point of ``caffe``."""
    run_main(main)


if __name__ == "__main__":
    run()
