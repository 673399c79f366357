"""deeplab-extract (tools/extract.py): run a test prototxt over an image list and dump one score
map per image.

Examples:
  deeplab-extract --model prototxt/voc12/DeepLab-LargeFOV/test.prototxt \\
      --weights models/DeepLab-LargeFOV/train2_iter_6000.caffemodel \\
      --list data/voc12/lists/val.txt --root data/voc12/VOC2012 --out exp/features/val/fc8 \\
      --labels-out exp/res/val/dcnn --batch 4 --gpu 0 --amp bf16
  deeplab-extract ... --format mat --out exp/features/val/fc8      # the release's .mat files
  deeplab-extract ... --shard 2/4                                 # second quarter of the list
"""
from __future__ import annotations

import argparse
import sys

from deeplab.cli import AMP_CHOICES, Terminated, default_amp, parse_set, run_main


def build_parser() -> argparse.ArgumentParser:
    """deeplab-extract's arguments."""
    p = argparse.ArgumentParser(
        prog="deeplab-extract", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Forward every listed image through a test prototxt (TEST phase) and write its score blob.\n"
                    "Preprocessing comes from the net's ImageSegData layer: the BGR image minus transform_param's\n"
                    "mean_value, placed top-left on a crop_size canvas padded with the mean colour. An image larger\n"
                    "than the crop runs at its own size, padded up until the scores cover it: nothing is truncated.\n"
                    "The stride-8 score rows/cols covering an H x W image are kept: ceil((H-1+o)/8)+1 x ceil((W-1+o)/8)+1,\n"
                    "where o is the net's offset: 0, or 7 for nets that crop the zoomed map before MatWrite (DeepLab's\n"
                    "514 nets: Interp, then Padding -7/-8), whose fc8 row r lies on pixel 8r - 7 (recorded in the sidecar).",
        epilog="Outputs per id (X = the image file's stem, or the id itself in an id list):\n"
               "  npy: OUT/X.npy (C x h x w stride-8 scores) + OUT/X.json {height, width, zoom, classes, offset};\n"
               "       deeplab.extract.scoremaps.load_scores() upsamples them like the Interp layer, dropping the first\n"
               "       offset rows/cols.\n"
               "  mat: OUT/X_blob_0.mat, exactly what the fork's MAT_WRITE wrote: the zoom-8 upsampled blob\n"
               "       over the whole padded canvas, variable 'data', MATLAB order W x H x C x 1 (float32).\n"
               "  --labels-out: DIR/X.png, argmax of the full-resolution scores as a palette PNG.\n"
               "Finished ids are skipped unless --force; a bad image stops the run naming its list line.\n"
               "OUT (and DIR) keep .provenance.json: the weights' digest, the net after placeholders, blob,\n"
               "format and dtype. A rerun with other inputs redoes the folder (with a note); outputs count as\n"
               "finished only when made from the current inputs and the same image file (size and date;\n"
               "deeplab/provenance.py). A second run into OUT with other inputs is refused while the first runs\n"
               "(exit 2); shards of one run may share OUT. Ctrl-C or SIGTERM stops after the writes under way and\n"
               "says what was done.\n"
               + (__doc__ or "").split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="test prototxt with an ImageSegData layer (V1 or V2 syntax)")
    p.add_argument("--weights", required=True, help=".caffemodel with weights for every layer the scores need")
    p.add_argument("--list", required=True,
                   help="list file: release-style lines '/JPEGImages/X.jpg [/SegmentationClassAug/X.png]' "
                        "(paths relative to --root; the label column is ignored), or one id per line "
                        "(image <root>/X.jpg, X.png or X.jpeg)")
    p.add_argument("--root", default="", help="folder the list's paths are relative to (the release's DATA_ROOT)")
    p.add_argument("--out", required=True, help="output folder for score maps")
    p.add_argument("--blob", default=None,
                   help="blob to dump (default: the bottom of the zoom Interp that feeds MatWrite, through any Padding, "
                        "e.g. fc8_voc12; else the net's only fc8* blob)")
    p.add_argument("--format", choices=("npy", "mat"), default="npy", help="npy (default) or mat (MAT_WRITE layout)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="dtype of .npy scores (default float16; .mat is always float32 as the fork wrote)")
    p.add_argument("--labels-out", default=None, metavar="DIR", help="also write argmax label PNGs here")
    p.add_argument("--classes", default=None,
                   help="dataset description for the --labels-out palette (voc12, camvid, synthetic or a file of "
                        "'index name R G B' lines); its class count must match the blob's channels. Without it "
                        "the PNGs get VOC's colour map, for any class count up to 256")
    p.add_argument("--gpu", type=int, default=None, metavar="ID", help="CUDA device (default: CPU; -1 = CPU)")
    p.add_argument("--amp", choices=AMP_CHOICES, default=default_amp(),
                   help="autocast the forward (scores come back as float32): auto (default; $DEEPLAB_AMP overrides "
                        "it) times the net's largest convolution in float32 and bf16 once per machine on the CPU and "
                        "takes the faster (one line on stderr; cached in ~/.cache/deeplab/precision.json), float32 on "
                        "CUDA; fp32 (or none) forces float32; bf16 or fp16 autocast. The precision used is recorded: "
                        "a rerun that comes to another redoes the outputs")
    p.add_argument("--batch", type=int, default=1, help="images per forward (same canvas size; default 1)")
    p.add_argument("--workers", type=int, default=2, help="threads reading images ahead of the net (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="fill a ${NAME} placeholder of the prototxt (repeatable), e.g. --set EXP=voc12")
    p.add_argument("--shard", default=None, metavar="K/N", help="process only the K-th of N interleaved parts")
    p.add_argument("--force", action="store_true", help="redo ids whose outputs already exist")
    p.add_argument("--strict", action="store_true",
                   help="refuse a weights file with layers the net lacks (default: a warning, as Caffe ignores them)")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory layout")
    p.add_argument("--backend", choices=("engine", "onnxruntime"), default="engine",
                   help="engine (default), or onnxruntime: the net exported to ONNX once (cached under a digest "
                        "of net and weights, --onnx-cache) and run by onnxruntime, float32 on the CPU")
    p.add_argument("--onnx-cache", default=None, metavar="DIR",
                   help="folder for --backend onnxruntime's exported files (default: <temp>/deeplab-onnx)")
    p.add_argument("--compile", action="store_true",
                   help="run the engine's forward through torch.compile (inductor, frozen weights, float32): "
                        "tens of seconds per canvas size to compile, then faster on small layers (README's speed "
                        "section says where it pays)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Build the score net, extract every listed image, print what was done."""
    args = build_parser().parse_args(argv)
    from deeplab.extract.runner import ExtractJob, extract_list

    job = ExtractJob(model=args.model, weights=args.weights, list=args.list, root=args.root, out=args.out,
                     labels_out=args.labels_out, classes=args.classes, format=args.format, dtype=args.dtype,
                     blob=args.blob, mapping=parse_set(args.set), gpu=args.gpu, amp=args.amp,
                     channels_last=not args.no_channels_last, strict=args.strict, backend=args.backend,
                     onnx_cache=args.onnx_cache, compile=args.compile, batch=args.batch, workers=args.workers, force=args.force,
                     shard=args.shard, progress=not args.quiet)
    stats: dict = {}
    try:
        extract_list(job, stats)
    except KeyboardInterrupt as e:
        print(f"{'SIGTERM' if isinstance(e, Terminated) else 'interrupted'}: {stats.get('done', 0)} written, "
              f"{stats.get('skipped', 0)} already done of {stats.get('images', 0)} images -> {args.out}; the same "
              f"command does the rest", file=sys.stderr)
        raise
    k, n = stats["shard"]
    print(f"{stats['done']} written, {stats['skipped']} already done ({stats['images']} images"
          f"{'' if n == 1 else f' in shard {k + 1}/{n}'}; blob {stats['blob']}, stride {stats['zoom']}) -> {args.out}",
          file=sys.stderr)
    return 0


def run() -> None:
    """The deeplab-extract console script."""
    run_main(main)
