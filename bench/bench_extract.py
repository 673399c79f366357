"""Score-map extraction speed (frames/s) against hand-written PyTorch modules, same run.

The paper (Sec. 3.1): DeepLab (fc6 4x4, dilation 4, 4096 wide) computes dense 39x39 scores
for a 306x306 input at about 8 frames/s on a 2014 GPU. This measures, with random weights
(He-normal) copied into both sides:

* DeepLab at 306x306 -> fc8 39x39 (prototxt/voc12/DeepLab/test.prototxt, --blob fc8_voc12),
  next to ``DeepLab`` below (a plain nn.Module with the same layers);
* DeepLab-LargeFOV at 513x513 -> fc8 65x65, next to bench/reference.py's ``LargeFOV``;

each as the extraction's forward (deeplab.extract.scorenet.ScoreNet.forward: numpy canvas in, numpy
scores out, inference mode, channels_last) against the module's forward with the same input,
memory format and copy back, interleaved repetitions, medians. Then the whole pipeline
(deeplab.extract.runner.extract: JPEG reading, mean subtraction, forward, .npy writing, threads)
for LargeFOV over a few 500x375 images, to show what reading/writing costs. On a GPU
(``torch.cuda.is_available()``) the same runs repeat there, also with --amp bf16.

    .venv/bin/python bench/bench_extract.py [--reps 3] [--images 3] [--batch 1] [--cpu-only]

Not a test: slow on a small shared CPU (each VGG forward is a few seconds there).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.reference import VGG_CONVS, LargeFOV, copy_weights, randomize  # noqa: E402
from deeplab.extract.runner import ListItem, Outputs, extract  # noqa: E402
from deeplab.extract.scorenet import ScoreNet  # noqa: E402

MAPPING = {"DATA_ROOT": ".", "LIST_DIR": ".", "TEST_SET": "bench", "FEATURE_DIR": ".", "NUM_LABELS": "21",
           "EXP": "voc12"}
PAPER_FPS = 8.0


class DeepLab(nn.Module):
    """The paper's DeepLab test net by hand: VGG-16 convs (conv5 dilation 2), pool1-3 MAX 2x2
    stride 2 pad 1, pool4 MAX 2x2 stride 1 pad 1, pool5 MAX 3x3 stride 1 pad 1 (Caffe's ceil
    rounding = PyTorch's ceil_mode), fc6 4x4 dilation 4 pad 6 to 4096, fc7 1x1 4096, fc8 1x1."""

    POOLS = [(2, 2, 1), (2, 2, 1), (2, 2, 1), (2, 1, 1), (3, 1, 1)]  # kernel, stride, pad

    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.blocks = []
        for convs in VGG_CONVS:
            for name, cin, cout, d in convs:
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=d, dilation=d))
            self.blocks.append([c[0] for c in convs])
        self.fc6 = nn.Conv2d(512, 4096, 4, padding=6, dilation=4)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.fc8_voc12 = nn.Conv2d(4096, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """BGR mean-subtracted N x 3 x H x W -> fc8 scores (dropout is off at test time)."""
        for names, (k, s, p) in zip(self.blocks, self.POOLS):
            for name in names:
                x = F.relu(getattr(self, name)(x), inplace=True)
            x = F.max_pool2d(x, k, s, p, ceil_mode=True)
        x = F.relu(self.fc6(x), inplace=True)
        x = F.relu(self.fc7(x), inplace=True)
        return self.fc8_voc12(x)

    def load_from_net(self, net) -> None:
        """Copy weights and biases from a caffe.net.Net with the same layer names."""
        copy_weights(self, net, [n for names in self.blocks for n in names] + ["fc6", "fc7", "fc8_voc12"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(fns: dict, reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each function over ``reps`` interleaved calls (order alternating)."""
    times = {k: [] for k in fns}
    for r in range(reps):
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def compare_forward(label: str, variant: str, size: int, module: nn.Module, device: torch.device, batch: int,
                    reps: int, amp: str | None) -> None:
    net = ScoreNet(os.path.join(ROOT, "prototxt", "voc12", variant, "test.prototxt"), mapping=MAPPING,
                   blob="fc8_voc12", device=device, amp=amp)
    randomize(net.net)
    module.load_from_net(net.net)
    module.eval()
    module.to(device).to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    canvas = (rng.random((batch, size, size, 3), dtype=np.float32) * 255 - 120).astype(np.float32)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    @torch.inference_mode()
    def hand():
        x = torch.from_numpy(canvas).permute(0, 3, 1, 2).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return module(x).float().cpu().numpy()

    ours, theirs = net.forward(canvas)[0], hand()  # warm-up, and the same answer
    scale = float(np.abs(theirs).max())
    if not scale > 0:
        raise SystemExit(f"{label}: the hand-written module's scores are all zero; the weights did not load")
    rel = float(np.abs(ours - theirs).max()) / scale
    t = median_times({"extract": lambda: net.forward(canvas), "hand": hand}, reps, device)
    fe, fh = batch / t["extract"], batch / t["hand"]
    print(f"{label:<28} {size:>4}x{size:<4} -> {ours.shape[2]}x{ours.shape[3]:<3}  {device.type:<4} "
          f"{amp or 'fp32':<4} b{batch:<2}  extract {fe:7.3f} f/s  hand-written {fh:7.3f} f/s  "
          f"ratio {fe / fh:5.3f}  max rel diff {rel:.1e}")


def pipeline(device: torch.device, n_images: int, batch: int, amp: str | None) -> None:
    """Whole extraction (read JPEG, forward, write .npy) of LargeFOV over 500x375 images."""
    net = ScoreNet(os.path.join(ROOT, "prototxt", "voc12", "DeepLab-LargeFOV", "test.prototxt"), mapping=MAPPING,
                   device=device, amp=amp)
    randomize(net.net)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for i in range(n_images + batch):
            path = os.path.join(tmp, f"im{i}.jpg")
            cv2.imwrite(path, rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
            items.append(ListItem(i + 1, f"im{i}", path))
        outputs = Outputs(os.path.join(tmp, "out"))
        extract(net, items[:batch], outputs, batch=batch, progress=False)  # warm-up
        sync(device)
        t = time.perf_counter()
        stats = extract(net, items[batch:], outputs, batch=batch, workers=2, progress=False)
        sync(device)
        elapsed = time.perf_counter() - t
        canvas = np.zeros((batch, 513, 513, 3), np.float32)
        forwards = math.ceil(n_images / batch)
        fwd = sum(median_times({"fwd": lambda: net.forward(canvas)}, 1, device)["fwd"] for _ in range(forwards))
    fps = stats["done"] / elapsed
    print(f"{'extract() LargeFOV pipeline':<28} {'500x375':>9} -> 65x65   {device.type:<4} {amp or 'fp32':<4} "
          f"b{batch:<2}  {stats['done']} images {fps:7.3f} f/s  forward alone {forwards * batch / fwd:7.3f} f/s  "
          f"ratio {fps * fwd / (forwards * batch):5.3f}")


def build_parser() -> argparse.ArgumentParser:
    """The command line (tools/gpu_check.sh's plan is checked with it)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="interleaved timed repetitions (default 3)")
    ap.add_argument("--images", type=int, default=3, help="images for the pipeline run (default 3)")
    ap.add_argument("--batch", type=int, default=1, help="images per forward on the CPU (default 1)")
    ap.add_argument("--gpu-batch", type=int, default=8, help="images per forward on a GPU (default 8)")
    ap.add_argument("--cpu-only", action="store_true", help="skip the GPU runs even where CUDA is available")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print(f"paper: DeepLab 306x306 -> 39x39 at {PAPER_FPS:g} frames/s on a 2014 GPU (this test net pads pool4 "
          f"for the 514 alignment, so 306 gives 41x41 here)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    runs = [(torch.device("cpu"), args.batch, None)]
    if torch.cuda.is_available() and not args.cpu_only:
        runs += [(torch.device("cuda"), args.gpu_batch, None), (torch.device("cuda"), args.gpu_batch, "bf16")]
    for device, batch, amp in runs:
        compare_forward("DeepLab (fc6 4x4, 4096)", "DeepLab", 306, DeepLab(21), device, batch, args.reps, amp)
        compare_forward("DeepLab-LargeFOV", "DeepLab-LargeFOV", 513, LargeFOV(21), device, batch, args.reps, amp)
        pipeline(device, args.images * (1 if device.type == "cpu" else 8), batch, amp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
