"""Benchmark the dense CRF stage on VOC-sized images (500 x 375, 21 labels, 10 iterations).

1. Seconds per image through ``densecrf.refine`` and, as the reference measured in the same run
   on the same inputs, a plain pydensecrf2 loop (unary, DenseCRF2D, two kernels, inference,
   argmax), interleaved; the ratio is densecrf's overhead (target <= 1.05).
2. Batch throughput of ``python -m densecrf``'s runner (files in, PNGs out) with -j 2 against
   -j 1 (target >= 1.8x on 2 free cores). The paper's anchor: < 0.5 s per PASCAL image on CPU.

Images are the VOC sample in ../shared (2011_003066, 500 x 375) and shifted, flipped and
colour-jittered copies of it; scores are stride-8, net-like (the label blurred plus noise).

    .venv/bin/python bench/bench_crf.py [--images 6] [--repeat 2] [--batch 8] [--backend torch]
        [--batch-repeat 3] [--skip-per-image]

The torch backend's ratios against pydensecrf2 (parity, phases, one thread, CUDA throughput) are
bench/bench_crf_torch.py's.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import tempfile
import time

import cv2
import numpy as np
import scipy.special

import densecrf
from deeplab.labels import read_label
from deeplab.extract.scoremaps import save_scores, upsample_scores
from densecrf import CRFParams
from deeplab.crf.batch import BatchJob, run_batch

SAMPLE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "voc12" / "sample"
H, W, C = 375, 500, 21


def make_inputs(n: int, seed: int = 0, sample: pathlib.Path | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` (RGB image, stride-8 scores, full-resolution scores) triples of VOC size, made from
    the VOC sample image in ``sample`` (default ../shared's; a folder given must hold it)."""
    rng = np.random.default_rng(seed)
    if sample is not None and not (sample / "2011_003066_image.png").exists():
        raise SystemExit(f"{sample}: no 2011_003066_image.png (the VOC sample image)")
    sample = SAMPLE if sample is None else sample
    if (sample / "2011_003066_image.png").exists():
        base = np.ascontiguousarray(cv2.imread(str(sample / "2011_003066_image.png"))[:, :, ::-1])
        label = read_label(sample / "2011_003066_label.png")
        label[label > 20] = 0
    else:  # a user's clone without ../shared: a synthetic scene of coloured blocks
        label = np.zeros((H, W), np.uint8)
        for k in range(1, 8):
            y, x = rng.integers(0, H - 80), rng.integers(0, W - 100)
            label[y:y + 80, x:x + 100] = rng.integers(1, 21)
        from deeplab.labels import voc_palette
        base = cv2.GaussianBlur(voc_palette()[label], (0, 0), 2)
    out = []
    sh, sw = (H - 1) // 8 + 2, (W - 1) // 8 + 2
    for k in range(n):
        img, lab = np.roll(base, 7 * k, axis=1), np.roll(label, 7 * k, axis=1)
        if k % 2:
            img, lab = img[:, ::-1], lab[:, ::-1]
        img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, 3), 0, 255).astype(np.uint8)
        small = cv2.resize(np.roll(lab, 4, axis=0), (sw, sh), interpolation=cv2.INTER_NEAREST)
        raw = np.stack([(small == c) * 4.0 for c in range(C)]).astype(np.float32)
        raw = cv2.GaussianBlur(raw.transpose(1, 2, 0), (0, 0), 1.0).transpose(2, 0, 1)
        raw += rng.normal(0, 1.0, raw.shape).astype(np.float32)
        out.append((np.ascontiguousarray(img), raw, upsample_scores(raw, 8, H, W)))
    return out


def plain_pydensecrf(rgb: np.ndarray, scores: np.ndarray, p: CRFParams) -> np.ndarray:
    """The reference: what a pydensecrf2 user writes by hand."""
    import pydensecrf.densecrf as dcrf   # imported here: the GPU throughput runs without pydensecrf2
    c, h, w = scores.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-scipy.special.log_softmax(scores, axis=0).reshape(c, -1)))
    d.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w, normalization=dcrf.NORMALIZE_AFTER)
    d.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=rgb, compat=p.bi_w,
                           normalization=dcrf.NORMALIZE_AFTER)
    return np.argmax(np.array(d.inference(p.iters)).reshape(c, h, w), axis=0).astype(np.uint8)


def bench_per_image(inputs, repeat: int) -> tuple[float, float]:
    """Median seconds per image: (densecrf.refine, plain pydensecrf2), interleaved."""
    p = CRFParams()
    ours, ref = [], []
    for r in range(repeat):
        for rgb, _, full in inputs:
            order = [0, 1] if r % 2 == 0 else [1, 0]
            for which in order:
                t = time.perf_counter()
                labels = densecrf.refine(rgb, full, p) if which == 0 else plain_pydensecrf(rgb, full, p)
                (ours if which == 0 else ref).append(time.perf_counter() - t)
                assert labels.shape == (H, W)
    return statistics.median(ours), statistics.median(ref)


def bench_batch(inputs, root: str, workers: int, backend: str = "pydensecrf2") -> float:
    """Images per second of the batch runner (JPEG + .npy in, PNG out) with ``workers`` processes
    (one thread each) running ``backend``."""
    job = BatchJob(images_dir=os.path.join(root, "images"), scores_dir=os.path.join(root, "scores"),
                   out_dir=os.path.join(root, f"out_j{workers}"), backend=backend)
    ids = [f"img{k:03d}" for k in range(len(inputs))]
    t = time.perf_counter()
    result = run_batch(job, ids, workers=workers, force=True, progress=False)
    elapsed = time.perf_counter() - t
    if result.failed:
        raise RuntimeError(f"batch failed: {result.failed}")
    return len(ids) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=6, help="distinct images for the per-image timing")
    ap.add_argument("--repeat", type=int, default=2, help="passes over them (median taken)")
    ap.add_argument("--batch", type=int, default=24, help="images for the -j 1 / -j 2 throughput runs (enough to amortise worker start-up)")
    ap.add_argument("--backend", default="pydensecrf2", help="CRF backend of the -j 1 / -j 2 runs (default pydensecrf2)")
    ap.add_argument("--batch-repeat", type=int, default=1, help="-j 1 / -j 2 run pairs, interleaved (median taken)")
    ap.add_argument("--skip-per-image", action="store_true", help="only the -j 1 / -j 2 throughput")
    args = ap.parse_args()

    print(f"CPU cores: {os.cpu_count()}; image {W}x{H}, {C} labels, {CRFParams().iters} iterations, "
          f"LargeFOV settings, NORMALIZE_AFTER")
    inputs = make_inputs(max(args.images, args.batch))
    if not args.skip_per_image:
        per = inputs[: args.images]
        plain_pydensecrf(*per[0][::2], CRFParams())  # warm-up
        ours, ref = bench_per_image(per, args.repeat)
        print(f"per image: densecrf.refine {ours:.3f} s, plain pydensecrf2 loop {ref:.3f} s, "
              f"ratio {ours / ref:.3f} (target <= 1.05; paper anchor < 0.5 s)")

    with tempfile.TemporaryDirectory() as root:
        for k, (rgb, raw, _) in enumerate(inputs[: args.batch]):
            name = f"img{k:03d}"
            os.makedirs(os.path.join(root, "images"), exist_ok=True)
            cv2.imwrite(os.path.join(root, "images", name + ".jpg"), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            save_scores(os.path.join(root, "scores", name + ".npy"), raw, H, W)
        rates: dict = {1: [], 2: []}
        for r in range(args.batch_repeat):
            for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
                rates[workers].append(bench_batch(inputs[: args.batch], root, workers, args.backend))
    j1, j2 = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"batch ({args.batch} images, files in and out, backend {args.backend}, {args.batch_repeat} interleaved "
          f"run(s) each, median): -j 1 {j1:.2f} img/s ({1 / j1:.3f} s/img), -j 2 {j2:.2f} img/s; "
          f"speed-up {j2 / j1:.2f}x (target >= 1.8x on 2 free cores)")


if __name__ == "__main__":
    main()
