"""The plan of tools/gpu_check.sh (issue 22 item 6), checked here before a lent GPU runs it.

``PLAN_ONLY=1 GPU=N tools/gpu_check.sh`` prints its commands, one a line, each under ``timeout``;
:func:`check_plan` parses every bench's arguments with that bench's own parser, checks that each
names the CUDA device ``cuda:N`` in a form torch accepts (bench_extract, which takes no device, runs
with CUDA_VISIBLE_DEVICES=N), that the test step selects the ``device`` marker, and that the
steps' limits add up to less than the 10-minute command (the script also stops at its deadline).

    python -m deeplab.recipe.gpu_check PLAN_FILE --gpu N
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys

from .. import DeepLabError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = {"pytest": "tests", "bench_engine.py": "engine", "bench_train.py": "train",
         "bench_extract.py": "extract", "bench_crf_torch.py": "crf"}
COMMAND_SECONDS = 600


def bench_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser of bench/``script`` (its ``build_parser``), imported from the file."""
    path = os.path.join(REPO, "bench", script)
    spec = importlib.util.spec_from_file_location(f"_plan_{script[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(path))   # (a bench imports its neighbours)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(path))
    return module.build_parser()


def _cuda(value: str, gpu: int, argv: list[str]) -> None:
    import torch
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError) as e:   # e.g. 'cuda0'
        raise DeepLabError(f"device {value!r} is not one torch accepts ({e}): {shlex.join(argv)}") from None
    if device != torch.device("cuda", gpu):
        raise DeepLabError(f"runs on {device}, not cuda:{gpu}: {shlex.join(argv)}")


def check_plan(lines: list[str], gpu: int) -> list[list[str]]:
    """Check the commands ``tools/gpu_check.sh`` prints with PLAN_ONLY=1 for ``GPU=gpu`` (see the
    module's docstring); a DeepLabError naming the first wrong one. Returns the commands."""
    commands = [shlex.split(line) for line in lines if line.strip()]
    seen, total = set(), 0
    for argv in commands:
        if argv[:1] != ["timeout"] or len(argv) < 3 or not argv[1].isdigit():
            raise DeepLabError(f"a step without its own timeout: {shlex.join(argv)}")
        total += int(argv[1])
        rest, env = argv[2:], {}
        if rest[:1] == ["env"]:
            rest = rest[1:]
            while rest and "=" in rest[0]:
                key, value = rest.pop(0).split("=", 1)
                env[key] = value
        script = next((k for k, a in enumerate(rest) if os.path.basename(a) in STEPS), None)
        if rest[1:3] == ["-m", "pytest"]:
            marker = rest[rest.index("-m", 2) + 1] if "-m" in rest[2:] else None
            if marker != "device":
                raise DeepLabError(f"the test step does not select the device marker: {shlex.join(argv)}")
            seen.add("tests")
        elif script is not None:
            name = os.path.basename(rest[script])
            try:
                args = bench_parser(name).parse_args(rest[script + 1:])
            except SystemExit:   # (argparse printed why)
                raise DeepLabError(f"{name} refuses these arguments: {shlex.join(argv)}") from None
            if name == "bench_extract.py":
                if env.get("CUDA_VISIBLE_DEVICES") != str(gpu) or args.cpu_only:
                    raise DeepLabError(f"the extraction bench does not run on GPU {gpu}: {shlex.join(argv)}")
            else:
                _cuda(args.throughput if name == "bench_crf_torch.py" else args.device, gpu, argv)
            if name == "bench_crf_torch.py":
                [int(b) for b in args.batches.split(",")]
            seen.add(STEPS[name])
    missing = set(STEPS.values()) - seen
    if missing:
        raise DeepLabError(f"the plan lacks {', '.join(sorted(missing))}")
    if total >= COMMAND_SECONDS:
        raise DeepLabError(f"the steps' limits add up to {total} s, not under the {COMMAND_SECONDS} s command")
    return commands


def main(argv: list[str] | None = None) -> int:
    """Check a plan file; print how many commands it holds."""
    ap = argparse.ArgumentParser(description="Check the commands tools/gpu_check.sh prints with PLAN_ONLY=1.")
    ap.add_argument("plan", help="the file PLAN_ONLY=1 tools/gpu_check.sh wrote")
    ap.add_argument("--gpu", type=int, required=True, help="the GPU index the plan was made for")
    args = ap.parse_args(argv)
    try:
        with open(args.plan) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DeepLabError(f"{args.plan}: cannot read the plan ({e.strerror})") from None
    commands = check_plan(lines, args.gpu)
    print(f"{args.plan}: {len(commands)} commands parse and run on cuda:{args.gpu}")
    return 0


if __name__ == "__main__":
    from deeplab.cli import run_main
    run_main(main)
