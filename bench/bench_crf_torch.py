"""Benchmark densecrf's torch backend against pydensecrf2: parity, lattice error, CPU speed.

1. Parity per image set, same parameters (LargeFOV defaults, NORMALIZE_AFTER, 10 iterations):
   share of pixels with the same label (target >= 99.5 %), mean IoU against the ground truth of
   each backend and their difference (target <= 0.1 points), largest marginal difference.
   Sets: the synthetic set (rendered here, 128 x 128, 5 classes) and CamVid images from
   ../shared (480 x 360, 11 classes); scores are net-like (the one-hot label at stride 8,
   blurred, plus noise, upsampled); and, with ``--features``, a trained net's score maps.
2. The lattice's own approximation error: normalised filtering (what the CRF uses) against a
   brute-force dense Gaussian on small CamVid crops, for the positional and bilateral kernels.
3. CPU speed at one thread (torch.set_num_threads(1); pydensecrf2 is single-threaded): seconds
   per 500 x 375 image, 21 labels, 10 iterations, interleaved, median, in wall and thread CPU
   time; the ratio (target >= 2.5x); the torch backend at 2 threads against 1, interleaved
   (target >= 1.8x), with what bounds that on two free cores, from CPU time (the main thread's
   share and the lattice build's thread-pool work); the phases of each (lattice build,
   unary/softmax, each kernel's filtering; thread CPU time). OpenMP threads wait passively
   (``OMP_WAIT_POLICY=PASSIVE`` unless set), as the project's commands run them.

``--features``: parity on a trained net's score maps (``deeplab-extract`` output, read with
densecrf's own loader), the CRF setting from ``--crf`` (a ``CRFParams`` JSON such as
``results/camvid/best.json``; default: LargeFOV's), ground truth from ``--labels``.

    .venv/bin/python bench/bench_crf_torch.py [--synthetic 16] [--camvid 6] [--speed-images 3] [--repeat 3]
        [--features DIR --images DIR --labels DIR --list FILE --classes N --crf JSON [--real-images K]]
    .venv/bin/python bench/bench_crf_torch.py --throughput cuda:0 [--batches 1,8,32] [--sample DIR]   # 4. GPU

4. ``--throughput DEVICE``: images per second of batches of 500 x 375 images on DEVICE (the
   issue's GPU target: >= 100 images/s on one H100), lattice build included, in float32 (the
   CRF runs in float32: its layers turn autocast off). The images are made from the VOC sample
   image (``--sample DIR``; the GPU recipe carries it in its pack, as ../shared does not travel),
   so the figure is comparable with the CPU numbers above.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: the commands' policy (caffe.threads)

import cv2
import numpy as np
import torch

import densecrf.lattice as lattice_module
from bench_crf import SAMPLE as SAMPLE_DEFAULT, make_inputs
from caffe.util.images import read_label
from deeplab.data.synthetic import CLASSES, render
from deeplab.eval.confusion import ConfusionMatrix
from deeplab.lists import read_ids
from deeplab.extract.scoremaps import upsample_scores
from densecrf import CRFParams, unary_from_scores
from densecrf.backends import PyDenseCRF2
from deeplab.crf.io import load_pair
from densecrf.lattice import LatticeSum, PermutohedralLattice, dense_gaussian_filter
from densecrf.torch_backend import TorchDenseCRF, _grid, bilateral_kernel, mean_field, positional_kernel

CAMVID = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def net_like_scores(label: np.ndarray, classes: int, seed: int, noise: float = 1.0) -> np.ndarray:
    """Full-resolution scores: the one-hot label at stride 8, blurred, noisy, upsampled as Interp does."""
    h, w = label.shape
    sh, sw = (h - 1) // 8 + 2, (w - 1) // 8 + 2
    small = cv2.resize(label, (sw, sh), interpolation=cv2.INTER_NEAREST)
    raw = np.stack([(small == c) * 4.0 for c in range(classes)]).astype(np.float32)
    raw = cv2.GaussianBlur(raw.transpose(1, 2, 0), (0, 0), 1.0).reshape(sh, sw, classes).transpose(2, 0, 1)
    raw += np.random.default_rng(seed).normal(0, noise, raw.shape).astype(np.float32)
    return upsample_scores(raw, 8, h, w)


def synthetic_set(n: int):
    """(name, image, label, unary) for ``n`` images of the synthetic set (seed 1, 128 x 128)."""
    for k in range(n):
        image, label = render(1, k, 128)
        clean = np.where(label == 255, 0, label).astype(np.uint8)
        yield f"synth_{k:05d}", image, label, unary_from_scores(net_like_scores(clean, len(CLASSES), k))


def camvid_set(n: int):
    """(name, image, label, unary) for the first ``n`` CamVid val images (void 11 -> ignored)."""
    ids = (CAMVID / "lists" / "val.txt").read_text().split()[:n]
    for k, name in enumerate(ids):
        image = np.ascontiguousarray(cv2.imread(str(CAMVID / "images" / f"{name}.png"))[:, :, ::-1])
        label = read_label(CAMVID / "labels" / f"{name}.png")
        clean = np.where(label == 11, 0, label).astype(np.uint8)
        yield name, image, np.where(label == 11, 255, label).astype(np.uint8), \
            unary_from_scores(net_like_scores(clean, 11, k))


def parity(name: str, cases, classes: int, p: CRFParams) -> None:
    """Print the parity line of one image set."""
    ref, ours = PyDenseCRF2(), TorchDenseCRF("cpu")
    cm_ref, cm_ours = ConfusionMatrix(classes), ConfusionMatrix(classes)
    same = total = 0
    worst_same, max_diff, n = 1.0, 0.0, 0
    for _, image, label, unary in cases:
        a, b = ref.marginals(image, unary, p), ours.marginals(image, unary, p)
        la, lb = a.argmax(0), b.argmax(0)
        eq = (la == lb).sum()
        same, total, n = same + eq, total + la.size, n + 1
        worst_same = min(worst_same, eq / la.size)
        max_diff = max(max_diff, float(np.abs(a - b).max()))
        cm_ref.update(label, la.astype(np.uint8))
        cm_ours.update(label, lb.astype(np.uint8))
    m_ref, m_ours = cm_ref.compute()["mean_iou"] * 100, cm_ours.compute()["mean_iou"] * 100
    print(f"parity {name} ({n} images): identical labels {100 * same / total:.4f} % (worst image "
          f"{100 * worst_same:.4f} %; target >= 99.5 %), mean IoU pydensecrf2 {m_ref:.3f} / torch {m_ours:.3f} "
          f"(diff {abs(m_ref - m_ours):.4f}; target <= 0.1), max |marginal diff| {max_diff:.2e}")


def feature_set(features: str, images: str, labels: str, list_path: str, classes: int, limit: int):
    """(id, image, label, unary) for the ids of ``list_path`` (the first ``limit``; 0: all): a
    trained net's score maps, read as the densecrf stage reads them."""
    ids = read_ids(list_path)
    for image_id in ids[:limit] if limit else ids:
        image, scores = load_pair(images, features, image_id)
        label = read_label(os.path.join(labels, image_id + ".png"), classes, 255)
        yield image_id, image, label, unary_from_scores(scores.scores)


def lattice_error() -> None:
    """Print the normalised lattice filter's error against a brute-force dense Gaussian."""
    p = CRFParams()
    if (CAMVID / "images").is_dir():
        img = cv2.imread(str(sorted((CAMVID / "images").glob("*.png"))[0]))[:, :, ::-1]
    else:
        img = render(1, 0, 128)[0]
    rng = np.random.default_rng(0)
    for size in (24, 48):
        crop = np.ascontiguousarray(cv2.resize(img, (size * 4 // 3, size), interpolation=cv2.INTER_AREA))
        h, w = crop.shape[:2]
        rgb = torch.from_numpy(crop.reshape(-1, 3).astype(np.float32))
        for kernel, feats in (("positional", _grid([(h, w)], p.pos_xy_std, "cpu")[0]),
                              ("bilateral", torch.cat([_grid([(h, w)], p.bi_xy_std, "cpu")[0], rgb / p.bi_rgb_std], 1))):
            x = torch.from_numpy(rng.random((h * w, 21)).astype(np.float32))
            x /= x.sum(1, keepdim=True)  # marginal-like
            lat = PermutohedralLattice(feats)
            approx = (lat.filter(x) / lat.filter(torch.ones(h * w, 1))).double()
            f64 = feats.double()
            exact = dense_gaussian_filter(f64, x.double()) / dense_gaussian_filter(f64, torch.ones(h * w, 1).double())
            rel = ((approx - exact).norm() / exact.norm()).item()
            print(f"lattice error {kernel:10s} {w}x{h}: relative L2 {rel:.4f}, max abs {(approx - exact).abs().max().item():.4f} "
                  f"(normalised filter of marginal-like values vs brute-force exp(-|df|^2/2))")


def plain_pydensecrf_phases(rgb: np.ndarray, unary: np.ndarray, p: CRFParams, clock) -> dict:
    """pydensecrf2's phases: kernel setup (its lattice builds) and inference with 0, 1, 2 kernels."""
    import pydensecrf.densecrf as dcrf   # imported here: the GPU throughput runs without pydensecrf2
    c, h, w = unary.shape
    u = np.ascontiguousarray(unary.reshape(c, -1))
    out = {}
    for kernels in (0, 1, 2):
        t0 = clock()
        d = dcrf.DenseCRF2D(w, h, c)
        d.setUnaryEnergy(u)
        t1 = clock()
        if kernels >= 1:
            d.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w, normalization=dcrf.NORMALIZE_AFTER)
        t2 = clock()
        if kernels >= 2:
            d.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=rgb, compat=p.bi_w,
                                   normalization=dcrf.NORMALIZE_AFTER)
        t3 = clock()
        d.inference(p.iters)
        t4 = clock()
        out[kernels] = (t2 - t1, t3 - t2, t4 - t3 + t1 - t0)
    return {"build pos": out[1][0], "build bi": out[2][1], "unary/softmax": out[0][2],
            "pos+bi filter": out[2][2] - out[0][2], "pos filter": out[1][2] - out[0][2],
            "bi filter": out[2][2] - out[1][2]}


def torch_phases(rgb: np.ndarray, unary: np.ndarray, p: CRFParams, clock) -> dict:
    """The torch backend's phases: each kernel's build (lattice and normalisation; the backend
    caches the positional one per image size); over the iterations, both kernels' messages (one
    fused splat-blur-slice, as mean_field runs them) and the rest of mean_field (unary, adds,
    softmax) = the whole run minus the messages; and each kernel's messages computed alone."""
    c, h, w = unary.shape
    t = {}
    t0 = clock()
    pos = positional_kernel([(h, w)], p.pos_xy_std, p.normalization, "cpu")
    t1 = clock()
    bi = bilateral_kernel([torch.from_numpy(rgb)], p.bi_xy_std, p.bi_rgb_std, p.normalization)
    t2 = clock()
    t["build pos"], t["build bi"] = t1 - t0, t2 - t1
    fused, spent = LatticeSum.filter, [0.0]

    def timed(self, x):
        a = clock()
        out = fused(self, x)
        spent[0] += clock() - a
        return out
    LatticeSum.filter = timed
    try:
        with torch.no_grad():
            a = clock()
            flat = torch.from_numpy(unary).reshape(c, -1).t()
            for q in mean_field(flat, (pos, bi), (float(p.pos_w), float(p.bi_w)), p.iters):
                pass
            q.t().reshape(c, h, w).contiguous().numpy()
            total = clock() - a
    finally:
        LatticeSum.filter = fused
    t["unary/softmax"], t["pos+bi filter"] = total - spent[0], spent[0]
    q = torch.softmax(torch.nn.functional.pad(-flat, (0, -c % 8), value=-float("inf")), 1)  # as mean_field pads
    for name, kernel, weight in (("pos filter", pos, p.pos_w), ("bi filter", bi, p.bi_w)):
        a = clock()
        for _ in range(p.iters):
            kernel.message(q, float(weight))
        t[name] = clock() - a
    return t


def speed(n_images: int, repeat: int) -> None:
    """Print per-image seconds of both backends at one thread, their ratio and phases.

    Both clocks: wall time and the thread's CPU time (on a shared machine the CPU time is the
    steadier of the two; the runs are interleaved so both backends see the same load).
    """
    torch.set_num_threads(1)
    p = CRFParams()
    inputs = [(rgb, unary_from_scores(full)) for rgb, _, full in make_inputs(n_images)]
    ref, ours = PyDenseCRF2(), TorchDenseCRF("cpu")
    ref.marginals(*inputs[0], p), ours.marginals(*inputs[0], p)  # warm-up
    times = {(b, k): [] for b in (0, 1) for k in ("wall", "cpu")}
    for r in range(repeat):
        for rgb, unary in inputs:
            for which in ((0, 1) if r % 2 == 0 else (1, 0)):
                a, b = time.perf_counter(), time.thread_time()
                (ref if which == 0 else ours).marginals(rgb, unary, p)
                times[which, "cpu"].append(time.thread_time() - b)
                times[which, "wall"].append(time.perf_counter() - a)
    for clock in ("wall", "cpu"):
        mr, mo = statistics.median(times[0, clock]), statistics.median(times[1, clock])
        print(f"speed ({clock} time), one thread, 500x375, 21 labels, {p.iters} iterations ({len(times[0, clock])} "
              f"runs each, interleaved, median): pydensecrf2 {mr:.3f} s, torch {mo:.3f} s per image; speed-up "
              f"{mr / mo:.2f}x (target >= 2.5x); best runs {min(times[0, clock]):.3f} s / {min(times[1, clock]):.3f} s")
    if (os.cpu_count() or 1) > 1:  # the torch backend's intra-op threads (pydensecrf2 has one)
        two_threads(ours, inputs, p, repeat)
    rgb, unary = inputs[0]
    ph_ref, ph_ours = [], []
    for _ in range(repeat):  # interleaved as well
        ph_ref.append(plain_pydensecrf_phases(rgb, unary, p, time.thread_time))
        ph_ours.append(torch_phases(rgb, unary, p, time.thread_time))
    notes = {"pos+bi filter": " (torch: one fused pass, as it runs)", "pos filter": " (torch: alone)",
             "bi filter": " (torch: alone)"}
    for key in ph_ref[0]:
        a = statistics.median(x[key] for x in ph_ref)
        b = statistics.median(x[key] for x in ph_ours)
        print(f"  phase (cpu time) {key:14s} pydensecrf2 {a:.3f} s   torch {b:.3f} s{notes.get(key, '')}")


def _pool_makespans(record: list) -> float:
    """Seconds the recorded thread-pool calls of the lattice build take on two cores: each call's
    items (thread CPU seconds, in submission order) dealt to whichever of two workers is free first."""
    total = 0.0
    for items in record:
        free = [0.0, 0.0]
        for t in items:
            free[free.index(min(free))] += t
        total += max(free)
    return total


def two_threads(ours: TorchDenseCRF, inputs: list, p: CRFParams, repeat: int) -> None:
    """Print the torch backend at two threads against one, interleaved (wall time: on a machine
    whose cores other processes use, this is the load's figure), and what bounds the scaling on
    two free cores, from CPU time: the main thread's CPU time (its share of torch's parallel
    operations and everything serial) plus the two-core makespan of the lattice build's
    thread-pool work, against the one-thread CPU time."""
    record: list = []
    plain_map = lattice_module._map

    def recorded_map(fn, items, device):
        times: list = []

        def timed(x):
            a = time.thread_time()
            out = fn(x)
            times.append(time.thread_time() - a)
            return out
        out = plain_map(timed, items, device)
        record.append(times)
        return out
    wall = {1: [], 2: []}
    cpu1, main2, all2, pool2 = [], [], [], []
    for r in range(repeat):
        for rgb, unary in inputs:
            for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
                torch.set_num_threads(threads)
                record.clear()
                lattice_module._map = recorded_map
                try:
                    a, b, c = time.perf_counter(), time.thread_time(), time.process_time()
                    ours.marginals(rgb, unary, p)
                    wall[threads].append(time.perf_counter() - a)
                    if threads == 1:
                        cpu1.append(time.thread_time() - b)
                    else:
                        main2.append(time.thread_time() - b)
                        all2.append(time.process_time() - c)
                        pool2.append(_pool_makespans(record))
                finally:
                    lattice_module._map = plain_map
    torch.set_num_threads(1)
    w1, w2 = statistics.median(wall[1]), statistics.median(wall[2])
    c1 = statistics.median(cpu1)
    path = statistics.median(m + q for m, q in zip(main2, pool2))
    print(f"speed (wall time), torch with 2 threads: {w2:.3f} s per image, 1 thread {w1:.3f} s ({len(wall[2])} runs each, "
          f"interleaved, median; {w1 / w2:.2f}x; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")
    print(f"  2 threads from cpu time: all threads {statistics.median(all2):.3f} s (1 thread {c1:.3f} s); critical path "
          f"(main thread {statistics.median(main2):.3f} s + the build's pool work on two cores "
          f"{statistics.median(pool2):.3f} s) {path:.3f} s: at most {c1 / path:.2f}x on two free cores")


def throughput(device: str, batches: list[int], n_images: int, repeat: int, sample: str | None = None) -> None:
    """Images per second of the torch backend on ``device``, batches of 500 x 375 images (21 labels,
    10 iterations, float32) filtered together; lattice build included. On CUDA, timed after
    synchronising. ``sample``: the folder of the VOC sample image the inputs are made from."""
    p = CRFParams()
    folder = pathlib.Path(sample) if sample else None
    inputs = [(rgb, unary_from_scores(full)) for rgb, _, full in make_inputs(n_images, sample=folder)]
    print(f"images: the VOC sample 2011_003066 from {folder or SAMPLE_DEFAULT}" if (folder or SAMPLE_DEFAULT).joinpath(
        "2011_003066_image.png").exists() else "images: synthetic coloured blocks (no VOC sample image here)")
    crf = TorchDenseCRF(device)
    cuda = crf.device.type == "cuda"
    name = torch.cuda.get_device_name(crf.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    for b in batches:
        batch = [inputs[k % len(inputs)] for k in range(b)]
        images, unaries = [x[0] for x in batch], [x[1] for x in batch]
        crf.marginals_batch(images, unaries, p)  # warm-up (allocations, kernels)
        times = []
        for _ in range(repeat):
            if cuda:
                torch.cuda.synchronize()
            a = time.perf_counter()
            crf.marginals_batch(images, unaries, p)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - a)
        t = statistics.median(times)
        print(f"throughput on {name}, float32, batch {b}: {b / t:.1f} images/s ({1000 * t / b:.1f} ms per image, "
              f"500x375, 21 labels, {p.iters} iterations; target on an H100: >= 100 images/s)")


def build_parser() -> argparse.ArgumentParser:
    """The bench's arguments (the GPU recipe's dry run checks its command line with them)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", type=int, default=16, help="synthetic images for the parity check")
    ap.add_argument("--camvid", type=int, default=6, help="CamVid val images for the parity check (0: skip)")
    ap.add_argument("--speed-images", type=int, default=3, help="distinct 500x375 images for the timing")
    ap.add_argument("--repeat", type=int, default=3, help="passes over them (median taken)")
    ap.add_argument("--skip-speed", action="store_true", help="parity and lattice error only")
    ap.add_argument("--features", metavar="DIR", help="parity on these score maps (.npy + sidecar, deeplab-extract)")
    ap.add_argument("--images", metavar="DIR", help="their RGB images (with --features)")
    ap.add_argument("--labels", metavar="DIR", help="their ground-truth label PNGs (with --features)")
    ap.add_argument("--list", metavar="FILE", help="the ids to use (with --features)")
    ap.add_argument("--classes", type=int, default=21, help="classes of --features (default 21)")
    ap.add_argument("--crf", metavar="JSON", help="CRF setting for --features (CRFParams fields; default LargeFOV's)")
    ap.add_argument("--real-images", type=int, default=0, help="first K ids of --list only (default 0: all)")
    ap.add_argument("--throughput", metavar="DEVICE", help="only the batched throughput on DEVICE (cuda, cpu)")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes of the CUDA throughput (default 1,8,32)")
    ap.add_argument("--sample", metavar="DIR",
                    help="folder holding the VOC sample image 2011_003066 (default: ../shared's)")
    return ap


def main() -> None:
    ap = build_parser()
    args = ap.parse_args()
    if args.throughput:
        throughput(args.throughput, [int(b) for b in args.batches.split(",")], args.speed_images, args.repeat,
                   args.sample)
        return
    torch.set_num_threads(1)
    p = CRFParams()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; CRF {p}")
    parity("synthetic", synthetic_set(args.synthetic), len(CLASSES), p)
    if args.camvid and (CAMVID / "lists" / "val.txt").exists():
        parity("camvid-val", camvid_set(args.camvid), 11, p)
    elif args.camvid:
        print(f"parity camvid-val: skipped, {CAMVID} not present", file=sys.stderr)
    if args.features:
        if not (args.images and args.labels and args.list):
            ap.error("--features needs --images, --labels and --list")
        real = CRFParams.from_dict(json.loads(pathlib.Path(args.crf).read_text())) if args.crf else p
        print(f"score maps {args.features} ({args.list}), CRF {real}")
        parity(f"features {pathlib.Path(args.features).parent.parent.name}/{pathlib.Path(args.features).name}",
               feature_set(args.features, args.images, args.labels, args.list, args.classes, args.real_images),
               args.classes, real)
    lattice_error()
    if not args.skip_speed:
        speed(args.speed_images, args.repeat)
        if torch.cuda.is_available():
            throughput("cuda", [int(b) for b in args.batches.split(",")], args.speed_images, args.repeat, args.sample)
        else:
            print("throughput on CUDA: not measured (no CUDA device on this machine; run --throughput cuda on one)")


if __name__ == "__main__":
    main()
