"""deeplab-recipe (tools/recipe.py): one experiment as one call on a lent GPU machine.

Examples:
  deeplab-recipe pack --out pack/camvid --root data/camvid/CamVid --list-dir data/camvid/list \\
      --sets train val test --init models/init/camvid/DeepLab-LargeFOV.caffemodel --wheels /tmp/wheels/*.whl
  deeplab-recipe run --pack pack/camvid --conf prototxt/camvid/DeepLab-LargeFOV-GPU --out $OUT \\
      --work /tmp/recipe --gpu 0 --amp bf16 --channels-last --workers 14 --minutes 6 --sets val test
  deeplab-recipe receive --results DIR --exper exper/camvid/DeepLab-LargeFOV-GPU
(make camvid-gpu-pack / camvid-gpu-dry-run / camvid-gpu-receive wrap these; tools/gpu_recipe.sh is
the one command the GPU machine runs.)
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from deeplab import DeepLabError
from deeplab.cli import AMP_CHOICES, default_amp, run_main


def build_parser() -> argparse.ArgumentParser:
    """deeplab-recipe's arguments (three subcommands)."""
    p = argparse.ArgumentParser(prog="deeplab-recipe", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Pack an experiment for a machine that receives few files, run "
                                            "it there in one call, and unpack what comes back.",
                                epilog=__doc__.split("\n", 2)[2])
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="dataset (JPEG + PNG), initial weights (float16) and wheels into one folder")
    pk.add_argument("--out", required=True, help="the pack folder")
    pk.add_argument("--root", required=True, help="the lists' root folder")
    pk.add_argument("--list-dir", required=True, help="folder of <set>.txt lists")
    pk.add_argument("--sets", nargs="+", required=True, help="list names to pack (e.g. train val test)")
    pk.add_argument("--init", required=True, help="caffemodel with the initial weights")
    pk.add_argument("--init-layers", default="conv.*",
                    help="regular expression of the layers to keep (default conv.*: layers made by fillers "
                         "are made again from the seed)")
    pk.add_argument("--quality", type=int, default=80, help="JPEG quality of the images (default 80)")
    pk.add_argument("--wheels", nargs="*", default=[], help="wheel files the machine lacks (e.g. protobuf, tqdm)")
    pk.add_argument("--sample", help="folder of the CRF bench's sample image, copied into the pack")
    r = sub.add_parser("run", help="unpack, train, extract, pack the results (the call on the GPU machine)")
    r.add_argument("--pack", required=True, help="folder made by `pack`")
    r.add_argument("--conf", required=True, help="folder with solver.prototxt, train.prototxt, test.prototxt")
    r.add_argument("--out", required=True, help="where archives, train.log and recipe.json go")
    r.add_argument("--work", required=True, help="scratch folder (data, snapshots)")
    r.add_argument("--gpu", type=int, default=None, help="CUDA device (default: the CPU)")
    r.add_argument("--amp", choices=AMP_CHOICES, default=default_amp(),
                   help="autocast for training (default auto: see deeplab-train --amp; float32 on CUDA); "
                        "extraction runs in float32")
    r.add_argument("--channels-last", action="store_true", help="channels_last memory format for training")
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="data loading processes")
    r.add_argument("--minutes", type=float, default=None, help="training time budget (deeplab-train --time-budget)")
    r.add_argument("--sets", nargs="+", default=["val", "test"], help="sets to extract (default val test)")
    r.add_argument("--classes", default="camvid", help="dataset description (default camvid)")
    r.add_argument("--batch", type=int, default=1, help="images per forward in extraction")
    r.add_argument("--dry-run", action="store_true",
                   help="the same steps with 2 iterations and 3 images per set (check the script on a CPU)")
    r.add_argument("--max-mib", type=float, default=15, help="largest archive in MiB (default 15)")
    r.add_argument("--deadline", type=float, default=None,
                   help="time (seconds since the epoch) by which the work must be done: training ends early "
                        "enough for the extraction, sets not started by then are skipped")
    f = sub.add_parser("finish", help="check that the folder comes back whole and list it in recipe.json")
    f.add_argument("--out", required=True, help="the run's --out folder")
    cu = sub.add_parser("check-upload", help="the bytes a device call would send; an error above the budget")
    cu.add_argument("--repo", default=".", help="the repository root (default .)")
    cu.add_argument("--carry", nargs="*", default=[], help="carried paths, relative to the root")
    cu.add_argument("--budget-mib", type=float, default=60, help="the most allowed (default 60)")
    cp = sub.add_parser("check-plan", help="check the commands gpu_recipe.sh prints with PLAN_ONLY=1")
    cp.add_argument("--plan", required=True, help="file of those commands, one a line")
    cp.add_argument("--gpu", type=int, required=True, help="the GPU the plan was made for")
    sub.add_parser("check-versions", help="an error unless Python, torch and numpy are the GPU image's")
    rc = sub.add_parser("receive", help="unpack run's archives into an experiment folder")
    rc.add_argument("--results", required=True, help="folder holding recipe.json and the archives")
    rc.add_argument("--exper", required=True, help="experiment folder, e.g. exper/camvid/DeepLab-LargeFOV-GPU")
    return p


def check_plan(lines: list[str], gpu: int) -> list[list[str]]:
    """Check the commands ``tools/gpu_recipe.sh`` prints with PLAN_ONLY=1 for ``GPU=gpu``: the
    recipe's and the CRF bench's arguments parse with their own parsers and name the CUDA
    device ``gpu`` in a form torch accepts. Returns the commands (argument lists)."""
    import torch
    commands = [shlex.split(line) for line in lines if line.strip()]
    seen = set()
    for argv in commands:
        module = [k for k in range(len(argv) - 1) if argv[k:k + 2] == ["-m", "deeplab.commands.recipe"]]
        script = [k for k, a in enumerate(argv) if a.endswith("bench_crf_torch.py")]
        if module:
            args = build_parser().parse_args(argv[module[0] + 2:])
            if args.command == "run" and args.gpu != gpu:
                raise DeepLabError(f"recipe run gets --gpu {args.gpu}, not {gpu}: {shlex.join(argv)}")
            seen.add(f"recipe {args.command}")
        elif script:
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[script[0]])))
            try:
                from bench_crf_torch import build_parser as bench_parser
            finally:
                sys.path.pop(0)
            args = bench_parser().parse_args(argv[script[0] + 1:])
            try:
                device = torch.device(args.throughput)
            except (RuntimeError, ValueError) as e:   # e.g. 'cuda0'
                raise DeepLabError(f"the CRF bench's device {args.throughput!r} is not one torch accepts ({e})") from None
            if device != torch.device("cuda", gpu):
                raise DeepLabError(f"the CRF bench runs on {device}, not cuda:{gpu}: {shlex.join(argv)}")
            [int(b) for b in args.batches.split(",")]
            seen.add("crf bench")
    missing = {"recipe run", "crf bench"} - seen
    if missing:
        raise DeepLabError(f"the plan lacks {', '.join(sorted(missing))}")
    return commands


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and print what it did."""
    args = build_parser().parse_args(argv)
    from deeplab.recipe import run as recipe
    if args.command == "pack":
        done = recipe.make_pack(args.out, args.root, args.list_dir, args.sets, args.init, args.init_layers,
                                args.quality, args.wheels, args.sample)
        print(f"{args.out}: {done['bytes'] / 2 ** 20:.1f} MiB; images {done['images']}; "
              f"{len(done['init_layers'])} initial layers", file=sys.stderr)
    elif args.command == "run":
        done = recipe.run(args.pack, args.conf, args.out, args.work, gpu=args.gpu, amp=args.amp,
                          channels_last=args.channels_last, workers=args.workers, minutes=args.minutes,
                          sets=args.sets, classes=args.classes, batch=args.batch,
                          max_bytes=int(args.max_mib * 2 ** 20), dry_run=args.dry_run, deadline=args.deadline)
        print(json.dumps({k: done[k] for k in ("iterations", "device", "timings", "archives", "skipped_sets",
                                               "omitted")}), file=sys.stderr)
    elif args.command == "finish":
        done = recipe.finish(args.out)
        files = done["returned_files"]
        print(f"{args.out}: {len(files)} files, {sum(f['bytes'] for f in files) / 2 ** 20:.1f} MiB come back: "
              + ", ".join(f["name"] for f in files), file=sys.stderr)
    elif args.command == "check-upload":
        from deeplab.recipe import lease
        done = lease.check_upload(args.repo, args.carry, int(args.budget_mib * 2 ** 20))
        print("upload: " + ", ".join(f"{k} {v / 2 ** 20:.1f} MiB" for k, v in done["parts"].items())
              + f"; {done['bytes'] / 2 ** 20:.1f} MiB of at most {args.budget_mib:g}", file=sys.stderr)
    elif args.command == "check-plan":
        from deeplab.recipe import lease
        with open(args.plan) as fh:
            commands = check_plan(fh.read().splitlines(), args.gpu)
        print(f"GPU branch: {len(commands)} commands parse and name cuda:{args.gpu}", file=sys.stderr)
    elif args.command == "check-versions":
        from deeplab.recipe import lease
        have = lease.check_versions()
        print("the GPU image's versions: " + ", ".join(f"{k} {v}" for k, v in have.items()), file=sys.stderr)
    else:
        done = recipe.receive(args.results, args.exper)
        print(f"{args.exper}: {done['iterations']} iterations on {done['device']}, sets {done['sets']}",
              file=sys.stderr)
    return 0


def run() -> None:
    """The deeplab-recipe console script."""
    run_main(main)


if __name__ == "__main__":
    run()
