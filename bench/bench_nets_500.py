"""Forward speed at 500 x 500 of FCN-8s and DeepLab-LargeFOV: the engine vs hand-written PyTorch.

FCN-8s is tests/fixtures/real_nets/fcn8s_voc.prototxt (the structure of
shelhamer/fcn.berkeleyvision.org voc-fcn8s/deploy.prototxt: VGG-16 with pad 100, fc6 7x7, the
score_pool4 / score_pool3 skips, Deconvolutions and Crops; ``--fcn`` takes another copy, e.g.
the release's own deploy.prototxt); its hand-written twin is ``FCN8s`` below (plain nn.Conv2d,
ReLU, MaxPool2d with ceil_mode as Caffe rounds, ConvTranspose2d, slicing for Crop). LargeFOV is
prototxt/voc12/DeepLab-LargeFOV/test.prototxt (bench/bench_engine.py's net, fc8 and its Interp
x8) against bench/reference.py's LargeFOV. Both engine nets are built in TEST phase with random
weights, the same weights are copied into the hand-written modules, and the outputs are checked
equal (float tolerance) before any timing. Then ``--repeat`` interleaved forwards of each (the
order alternates), in inference mode; printed: median ms, ratio of medians engine /
hand-written (target <= 1.10) and the ratio of the fastest runs. Not a test; timings on a shared
machine are noisy: say so when quoting them.

  .venv/bin/python bench/bench_nets_500.py [--threads 2] [--repeat 3] [--device cpu] [--size 500]
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_engine import engine_net, timed  # noqa: E402
from bench.reference import VGG_CONVS, LargeFOV, copy_weights, randomize  # noqa: E402
from caffe.net import Net  # noqa: E402

FCN8S = os.path.join(ROOT, "tests", "fixtures", "real_nets", "fcn8s_voc.prototxt")


class FCN8s(nn.Module):
    """FCN-8s (voc-fcn8s deploy) as a plain nn.Module, layer names as in the prototxt."""

    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.blocks = []
        for convs in VGG_CONVS:
            for name, cin, cout, _ in convs:
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=100 if name == "conv1_1" else 1))
            self.blocks.append([name for name, *_ in convs])
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, bias=False)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, bias=False)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, 8, bias=False)

    @staticmethod
    def crop(x, like, offset):
        """Caffe's Crop with axis 2: ``like``'s H x W from ``offset`` on both spatial axes."""
        h, w = like.shape[2:]
        return x[:, :, offset:offset + h, offset:offset + w]

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x, pools = data, []
        for names in self.blocks:
            for name in names:
                x = F.relu(getattr(self, name)(x), inplace=True)
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            pools.append(x)
        x = F.relu(self.fc6(x), inplace=True)
        x = F.relu(self.fc7(x), inplace=True)
        up2 = self.upscore2(self.score_fr(x))
        fuse4 = up2 + self.crop(self.score_pool4(pools[3]), up2, 5)
        up4 = self.upscore_pool4(fuse4)
        fuse3 = up4 + self.crop(self.score_pool3(pools[2]), up4, 9)
        return self.crop(self.upscore8(fuse3), data, 31)

    def layer_names(self) -> list[str]:
        return [n for n, m in self.named_children() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@torch.no_grad()
def fcn_pair(path, size, device):
    """(engine forward, hand-written forward) of FCN-8s at ``size``."""
    net = Net(path, "TEST", input_shapes={"data": (1, 3, size, size)})
    randomize(net, 0)
    ref = FCN8s(21)
    copy_weights(ref, net, ref.layer_names())
    net, ref = net.to(device), ref.to(device).eval()
    return (lambda x: net({"data": x}, outputs=["score"])["score"]), ref


def largefov_pair(device):
    """(engine forward, hand-written forward) of the LargeFOV test net (fc8 and Interp x8)."""
    net = engine_net(torch.device("cpu"), channels_last=False)
    randomize(net, 1)
    ref = LargeFOV(21)
    ref.load_from_net(net)
    net, ref = net.to(device), ref.to(device).eval()
    return (lambda x: net({"data": x}, outputs=["fc8_interp"])["fc8_interp"]), (lambda x: ref.upsample(ref(x)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=3, help="timed forwards of each, interleaved (default 3)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--size", type=int, default=500, help="square input size (default 500)")
    ap.add_argument("--fcn", default=FCN8S, help="FCN-8s deploy prototxt (default: the test fixture)")
    ap.add_argument("--nets", default="fcn8s,largefov", help="which nets, comma separated (default both)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()}, input 1x3x{args.size}x{args.size}, {args.repeat} interleaved "
          "repeats, random weights")
    print(f"{'net':<9}  {'output':>14}  {'engine ms':>10}  {'hand ms':>9}  {'ratio':>6}  {'min ratio':>9}  "
          "max|diff| / max|out|")
    worst = 0.0
    for name in args.nets.split(","):
        torch.manual_seed(0)
        engine, hand = fcn_pair(args.fcn, args.size, device) if name == "fcn8s" else largefov_pair(device)
        x = torch.randn(1, 3, args.size, args.size, device=device) * 60
        with torch.inference_mode():
            a, b = engine(x), hand(x)                            # warm-up, and the same answer
            rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
            if tuple(a.shape) != tuple(b.shape) or not rel < 1e-4:
                print(f"error: {name}: engine and hand-written outputs differ: shapes {tuple(a.shape)} "
                      f"{tuple(b.shape)}, relative max difference {rel:.2e}")
                return 1
            times = {"engine": [], "hand": []}
            for r in range(args.repeat):
                order = [("engine", engine), ("hand", hand)]
                for key, fn in order if r % 2 == 0 else order[::-1]:
                    times[key].append(timed(fn, x, device))
        te, th = statistics.median(times["engine"]), statistics.median(times["hand"])
        worst = max(worst, te / th)
        shape = "x".join(str(s) for s in a.shape)
        print(f"{name:<9}  {shape:>14}  {te * 1e3:>10.1f}  {th * 1e3:>9.1f}  {te / th:>6.3f}  "
              f"{min(times['engine']) / min(times['hand']):>9.3f}  {rel:.1e}")
        del engine, hand, a, b
    print(f"worst ratio of medians engine/hand-written: {worst:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
