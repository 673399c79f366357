"""deeplab-crf-search (tools/crf_search.py): search the dense CRF's parameters on a subset of
images with ground truth (paper, Section 5)."""
from __future__ import annotations

import argparse
import os

from caffe.util.files import check_output_dir, why_not
from deeplab import DeepLabError
from deeplab.cli import run_main
from deeplab.labels import load_classes
from deeplab.lists import read_ids
from densecrf.backends import BACKENDS, DEFAULT_BACKEND
from deeplab.crf.io import scores_record_time
from deeplab.provenance import read_journal
from densecrf.params import NORMALIZATIONS, CRFParams
from deeplab.crf.search import COARSE, SearchData, choose_subset, format_outcome, parse_grid, search

EPILOG = """\
The paper fixes w2=3, sigma_gamma=3 and searches w1 in 5..10, sigma_alpha in 50:10:100 and
sigma_beta in 3:1:10 (the defaults here), then a finer grid around the best (+-1 coarse step
in steps of step/--fine-div). Grids are 'a,b,c', 'start:stop' or 'start:step:stop' (the
paper's order, as every range of these tools).
Also evaluated for reference: no CRF (argmax of the scores) and the release's defaults.
Outputs in --out: search.csv (every setting's mean IoU; reruns resume from it), best.json
(the best setting, loadable with CRFParams.from_dict), heatmap.png, subset.txt (the ids used),
.provenance.json (score folder's record, ground truth, classes, backend, subset): a rerun with
other inputs starts over, with a note (deeplab/provenance.py).
example:
  deeplab-crf-search --images VOC2012/JPEGImages --scores scores/val --labels VOC2012/SegmentationClass \\
      --list val.txt --out crf_search -j 8
"""


def build_parser() -> argparse.ArgumentParser:
    """deeplab-crf-search's arguments."""
    d = CRFParams()
    p = argparse.ArgumentParser(prog="deeplab-crf-search", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder of images (X.jpg / X.png)")
    p.add_argument("--scores", required=True, help="folder of score maps (X.npy + X.json, or X_blob_0.mat)")
    p.add_argument("--labels", required=True, help="folder of ground-truth label PNGs (X.png)")
    p.add_argument("--list", required=True, help="list file of image ids to draw the subset from")
    p.add_argument("--out", required=True, help="output folder (search.csv, best.json, heatmap.png)")
    p.add_argument("--n", type=int, default=100, help="images in the random subset (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draw (default 0)")
    p.add_argument("--classes", default="voc12", help="dataset description: voc12 (default), camvid, synthetic "
                                                      "or a file of 'index name R G B' lines")
    p.add_argument("--ignore-label", type=int, default=None,
                   help="ground-truth value to ignore (default: the description's void value, 255 for every "
                        "shipped dataset, CamVid's after preparation included)")
    p.add_argument("--bi-w", default=COARSE["bi_w"], help=f"w1 grid (default {COARSE['bi_w']})")
    p.add_argument("--bi-xy-std", default=COARSE["bi_xy_std"], help=f"sigma_alpha grid (default {COARSE['bi_xy_std']})")
    p.add_argument("--bi-rgb-std", default=COARSE["bi_rgb_std"], help=f"sigma_beta grid (default {COARSE['bi_rgb_std']})")
    p.add_argument("--pos-w", type=float, default=d.pos_w, help=f"w2, fixed (default {d.pos_w:g})")
    p.add_argument("--pos-xy-std", type=float, default=d.pos_xy_std, help=f"sigma_gamma, fixed (default {d.pos_xy_std:g})")
    p.add_argument("--iters", type=int, default=d.iters, help=f"mean-field iterations (default {d.iters})")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default=d.normalization, help="kernel normalisation")
    p.add_argument("--backend", choices=sorted(BACKENDS), default=DEFAULT_BACKEND, help="inference backend")
    p.add_argument("--fine-div", type=int, default=2, help="fine grid step = coarse step / this; 0 skips it (default 2)")
    p.add_argument("--top", type=int, default=10, help="settings to print (default 10)")
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="discard earlier results in --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the search; print the top settings; write CSV, JSON and heatmap."""
    args = build_parser().parse_args(argv)
    for name in ("images", "scores", "labels"):
        if not os.path.isdir(getattr(args, name)):
            raise DeepLabError(f"--{name} {getattr(args, name)} {why_not(getattr(args, name), 'folder')}")
    if args.n < 1 or args.jobs < 1 or args.fine_div < 0:
        raise DeepLabError("--n and -j must be >= 1, --fine-div >= 0")
    base = CRFParams(iters=args.iters, pos_w=args.pos_w, pos_xy_std=args.pos_xy_std, normalization=args.normalization)
    coarse = {"bi_w": parse_grid(args.bi_w), "bi_xy_std": parse_grid(args.bi_xy_std),
              "bi_rgb_std": parse_grid(args.bi_rgb_std)}
    check_output_dir(args.out, "--out folder")
    classes = load_classes(args.classes)
    ids = choose_subset(read_ids(args.list), args.n, args.seed)
    data = SearchData(args.images, args.scores, args.labels, tuple(ids), classes.num_classes,
                      classes.ignore if args.ignore_label is None else args.ignore_label, args.backend,
                      scores_record_time(args.scores), read_journal(args.scores))
    outcome = search(data, base, coarse, args.out, seed=args.seed, list_name=args.list, workers=args.jobs,
                     fine_div=args.fine_div, force=args.force, progress=not args.quiet)
    print(format_outcome(outcome, base, args.top))
    return 0


def run() -> None:
    """The deeplab-crf-search console script."""
    run_main(main)
