"""``densecrf`` / ``python -m densecrf``: refine dumped score maps with the fully connected CRF, in parallel."""
from __future__ import annotations

import argparse
import os
import sys

from caffe.util.files import check_output_dir, why_not
from deeplab import DeepLabError
from deeplab.cli import run_main, shard
from deeplab.lists import read_ids

from densecrf.backends import BACKENDS, DEFAULT_BACKEND
from deeplab.provenance import open_output, read_journal, source_identity, text_digest

from ..crf.batch import BatchJob, run_batch, summary
from ..crf.io import check_class_counts, scores_record_time
from densecrf.params import NORMALIZATIONS, CRFParams

DESCRIPTION = "Refine dumped score maps with the fully connected CRF (DeepLab, Section 4.2), in parallel."

EPILOG = """\
inputs per id X in --list:
  image   IMAGES/X.jpg or X.png (any size; read with OpenCV, given to the CRF as RGB)
  scores  SCORES/X.npy + X.json (stride-8 net output, upsampled with the Interp alignment)
          or SCORES/X_blob_0.mat (the DeepLab fork's MAT_WRITE output, cropped to the image)
outputs:
  OUT/X.png  label map as a palette PNG;  OUT/X.npy  marginals C x H x W (with --save-prob)
List lines are ids or release-style '/JPEGImages/X.jpg /SegmentationClassAug/X.png'.
Finished ids are skipped unless --force. Exit status 1 if any image failed (listed at the end).
OUT keeps .provenance.json (CRF parameters, backend, palette, the score folder's own record):
a rerun with other inputs redoes the folder, with a note (deeplab/provenance.py); an id is
redone when its image or score map changed. Score maps older than their folder's record
(made from other weights), or made from an earlier version of their image, are refused as
stale. All score maps of a run must have one class count. A second run into the same OUT
with other inputs is refused while the first runs (exit 2); shards of one run may share OUT.

Paper symbols: w1=--bi-w, sigma_alpha=--bi-xy-std, sigma_beta=--bi-rgb-std, w2=--pos-w,
sigma_gamma=--pos-xy-std. Defaults are the release's DeepLab-LargeFOV settings.
example:
  python -m densecrf --images VOC2012/JPEGImages --scores scores/val --list val.txt --out crf/val -j 8
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m densecrf``."""
    d = CRFParams()
    p = argparse.ArgumentParser(prog="densecrf", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    io = p.add_argument_group("files")
    io.add_argument("--images", required=True, help="folder of images (X.jpg / X.png)")
    io.add_argument("--scores", required=True, help="folder of score maps (X.npy + X.json, or X_blob_0.mat)")
    io.add_argument("--list", required=True, help="list file of image ids")
    io.add_argument("--out", required=True, help="output folder for label PNGs (and marginals)")
    io.add_argument("--classes", help="class list for the PNG palette: voc12 (default colours), camvid or a file; "
                                      "the score maps must then have that many classes")
    io.add_argument("--save-prob", action="store_true", help="also write the marginals OUT/X.npy (C x H x W)")
    io.add_argument("--prob-dtype", choices=("float32", "float16"), default="float32",
                    help="dtype of the saved marginals (default float32)")
    crf = p.add_argument_group("CRF parameters")
    crf.add_argument("--iters", type=int, default=d.iters, help=f"mean-field iterations (default {d.iters})")
    crf.add_argument("--bi-w", type=float, default=d.bi_w, help=f"w1, bilateral kernel weight (default {d.bi_w:g})")
    crf.add_argument("--bi-xy-std", type=float, default=d.bi_xy_std,
                     help=f"sigma_alpha, bilateral position std in pixels (default {d.bi_xy_std:g})")
    crf.add_argument("--bi-rgb-std", type=float, default=d.bi_rgb_std,
                     help=f"sigma_beta, bilateral colour std (default {d.bi_rgb_std:g})")
    crf.add_argument("--pos-w", type=float, default=d.pos_w, help=f"w2, Gaussian kernel weight (default {d.pos_w:g})")
    crf.add_argument("--pos-xy-std", type=float, default=d.pos_xy_std,
                     help=f"sigma_gamma, Gaussian kernel std in pixels (default {d.pos_xy_std:g})")
    crf.add_argument("--normalization", choices=NORMALIZATIONS, default=d.normalization,
                     help="kernel normalisation: 'after' as the release's densecrf (default), "
                          "or 'symmetric' (pydensecrf's default)")
    crf.add_argument("--backend", choices=sorted(BACKENDS), default=DEFAULT_BACKEND, help="inference backend")
    run = p.add_argument_group("running")
    run.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1,
                     help="worker processes (default: all cores); one image in memory per worker")
    run.add_argument("--shard", help="process only shard K of N (K/N, 1-based), e.g. for job arrays")
    run.add_argument("--force", action="store_true", help="redo ids whose outputs already exist")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def params_from_args(args: argparse.Namespace) -> CRFParams:
    """CRFParams from parsed CRF options."""
    return CRFParams(iters=args.iters, bi_w=args.bi_w, bi_xy_std=args.bi_xy_std, bi_rgb_std=args.bi_rgb_std,
                     pos_w=args.pos_w, pos_xy_std=args.pos_xy_std, normalization=args.normalization)


def main(argv: list[str] | None = None) -> int:
    """Run the batch CRF; returns 1 when any image failed."""
    args = build_parser().parse_args(argv)
    for name in ("images", "scores"):
        if not os.path.isdir(getattr(args, name)):
            raise DeepLabError(f"--{name} {getattr(args, name)} {why_not(getattr(args, name), 'folder')}")
    if args.jobs < 1:
        raise DeepLabError(f"-j must be >= 1, got {args.jobs}")
    if args.save_prob and os.path.realpath(args.out) == os.path.realpath(args.scores):
        raise DeepLabError("--out must differ from --scores with --save-prob (X.npy would overwrite the scores)")
    check_output_dir(args.out, "--out folder")
    palette = num_classes = None
    if args.classes:
        from deeplab.labels import load_classes

        cs = load_classes(args.classes)
        palette, num_classes = cs.palette, cs.num_classes
    ids = shard(read_ids(args.list), args.shard)
    params = params_from_args(args)
    inputs = {"params": params.to_dict(), "backend": args.backend, "scores": source_identity(args.scores),
              "palette": None if palette is None else text_digest(palette.tobytes()), "classes": num_classes,
              "prob_dtype": args.prob_dtype if args.save_prob else None}
    info = {"images": args.images, "scores": args.scores, "list": args.list}
    check_class_counts(args.scores, ids, num_classes, f"the class list {args.classes}")
    with open_output(args.out, "densecrf", inputs, info) as record:
        job = BatchJob(images_dir=args.images, scores_dir=args.scores, out_dir=args.out, params=params,
                       backend=args.backend, save_prob=args.save_prob, prob_dtype=args.prob_dtype,
                       palette=palette, num_classes=num_classes, record=record,
                       scores_since=scores_record_time(args.scores), scores_journal=read_journal(args.scores))
        result = run_batch(job, ids, workers=args.jobs, force=args.force, progress=not args.quiet)
    print(summary(result, args.out), file=sys.stderr if result.failed else sys.stdout)
    return 1 if result.failed else 0


def run() -> None:
    """The ``densecrf`` console script."""
    run_main(main)


if __name__ == "__main__":
    run()
