"""Precision chosen by measuring the machine: what ``--amp auto`` resolves to.

Machines differ: bf16 autocast made one CPU's LargeFOV 3.5x faster (AMX) and another's 22x
slower (no native bf16). ``resolve_amp("auto", net, device, ...)`` times the net's own
largest convolution (by multiply-adds at the input size the net was built for; its channels,
kernel, stride, pad, dilation and group, on a spatial crop scaled down to about
``PROBE_MACS`` multiply-adds) in float32 and under bf16 autocast, in the run's memory format,
and picks the faster. A bf16 that is hopeless is given up on early: it is first timed on a
16x smaller input, and skipped when that already says it is ``GIVE_UP`` times slower than
float32. The whole probe took 0.7-1.1 s on this project's loaded 2-core machine (most of it the
process's first convolution); a cached answer costs nothing.

The result is kept per machine in ``<cache>/deeplab/precision.json`` (``$XDG_CACHE_HOME``,
else ``~/.cache``), keyed by the CPU (model name and a digest of its flags), the torch version,
the thread count, the memory format and the convolution's shape; another key probes again.
An unreadable or corrupt cache is ignored and rewritten (atomically). One line says what was
chosen and the two timings. Only the CPU is probed: on CUDA ``auto`` keeps float32, as
before. The ``caffe`` command and pycaffe never come here: they run float32 unless asked.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Callable

AMP_CHOICES = ("auto", "fp32", "none", "bf16", "fp16")   # what --amp accepts
PROBE_MACS = 4e9          # the probe times the convolution on crops of about this many multiply-adds
SMALL_DIVISOR = 4         # ... and on crops of this many times fewer (the fit's second point)
SCOUT_DIVISOR = 16        # bf16 is first tried on a crop this many times smaller than the first
GIVE_UP = 8.0             # ... and given up on when it is this many times slower than float32 there
SMALL_REPS = 5            # timed runs of a convolution small enough to be timed whole
MAX_ENTRIES = 32          # entries the cache keeps (the most recent)
CACHE_VERSION = 1


@dataclass(frozen=True)
class ConvShape:
    """One 2-D convolution for one image: ``channels`` x ``height`` x ``width`` in,
    ``out`` channels, Caffe's geometry (each a (h, w) pair) and group."""

    layer: str
    channels: int
    height: int
    width: int
    out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    group: int

    def out_hw(self) -> tuple[int, int]:
        """The output's rows and columns (Caffe's and torch's rule)."""
        return tuple((s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, p, d, k, st in
                     zip((self.height, self.width), self.pad, self.dilation, self.kernel, self.stride))

    def macs(self) -> int:
        """Multiply-adds of one forward."""
        oh, ow = self.out_hw()
        return max(oh, 0) * max(ow, 0) * self.out * (self.channels // self.group) * math.prod(self.kernel)

    def scaled(self, macs: float) -> "ConvShape":
        """The same convolution on a spatial crop scaled so it takes at most about ``macs``
        multiply-adds (never larger than this one, never so small that no output is left)."""
        f = min(1.0, math.sqrt(macs / max(self.macs(), 1)))
        least = [max(1, d * (k - 1) + 1 - 2 * p) for d, k, p in zip(self.dilation, self.kernel, self.pad)]
        h, w = (max(lo, min(s, 8), round(s * f)) for s, lo in zip((self.height, self.width), least))
        return ConvShape(self.layer, self.channels, h, w, self.out, self.kernel, self.stride, self.pad,
                         self.dilation, self.group)

    def describe(self) -> str:
        """e.g. ``fc6 512->1024 3x3 dilation 12 at 41x41``."""
        k = "x".join(map(str, self.kernel))
        extra = "".join(f" {name} {v[0] if v[0] == v[1] else 'x'.join(map(str, v))}"
                        for name, v in (("stride", self.stride), ("dilation", self.dilation)) if v != (1, 1))
        extra += f" group {self.group}" if self.group != 1 else ""
        return f"{self.layer} {self.channels}->{self.out} {k}{extra} at {self.height}x{self.width}"


def largest_conv(net) -> ConvShape | None:
    """The 2-D Convolution layer of a built caffe ``Net`` with the most multiply-adds per image
    at the input size it was built for; None when it has none."""
    from .layer.conv import Convolution

    best = None
    for layer in net.layers:
        if type(layer) is not Convolution or len(layer.kernel) != 2:
            continue
        shape = net.blob_shapes[layer.bottom_names[0]]
        ax = layer.axis
        conv = ConvShape(layer.name, int(shape[ax]), int(shape[ax + 1]), int(shape[ax + 2]),
                         int(layer.blobs[0].shape[0]), tuple(layer.kernel), tuple(layer.stride), tuple(layer.pad),
                         tuple(layer.dilation), int(layer.group))
        if best is None or conv.macs() > best.macs():
            best = conv
    return best


class ConvTimer:
    """The default timer: ``timer(conv, precision, channels_last)`` -> seconds of one forward
    of ``conv`` on random data in float32 ("fp32") or under bf16 autocast ("bf16") on the CPU.
    The weights (the same for every crop of one convolution) are made once."""

    def __init__(self):
        self._weights: dict = {}

    def __call__(self, conv: ConvShape, precision: str, channels_last: bool) -> float:
        import torch
        import torch.nn.functional as F

        wkey = (conv.channels, conv.out, conv.kernel, conv.group, channels_last)
        if wkey not in self._weights:
            w = torch.empty(conv.out, conv.channels // conv.group, *conv.kernel).uniform_(-0.05, 0.05)
            self._weights[wkey] = (w.contiguous(memory_format=torch.channels_last) if channels_last else w,
                                   torch.empty(conv.out).uniform_(-1, 1))
        w, b = self._weights[wkey]
        x = torch.empty(1, conv.channels, conv.height, conv.width).uniform_(-1, 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            start = time.perf_counter()
            F.conv2d(x, w, b, conv.stride, conv.pad, conv.dilation, conv.group)
            return time.perf_counter() - start


Timer = Callable[[ConvShape, str, bool], float]


def _full_time(conv: ConvShape, small: ConvShape, big: ConvShape, t_small: float, t_big: float) -> float:
    """A forward of ``conv`` from the times of two crops: a fixed cost per call (the weights'
    reorder and cast) plus a cost per multiply-add, fitted through the two points; the fixed
    part is held to at most half of the larger crop's time (one noisy run cannot make the
    whole convolution look free)."""
    rate = t_big / max(big.macs(), 1)
    if big.macs() > small.macs():
        rate = min(rate, max(0.5 * rate, (t_big - t_small) / (big.macs() - small.macs())))
    return t_big + rate * (conv.macs() - big.macs())


def _time_precision(conv, small, big, precision, channels_last, timer, reps) -> float:
    """``precision``'s estimated time for ``conv``: the least of ``reps`` runs of each crop
    (``big`` already run once untimed)."""
    if big == conv:   # a convolution already within the budget: timed whole, a few more times (cheap)
        return min(timer(conv, precision, channels_last) for _ in range(max(reps, SMALL_REPS)))
    t_small = t_big = math.inf
    for _ in range(reps):
        t_small = min(t_small, timer(small, precision, channels_last))
        t_big = min(t_big, timer(big, precision, channels_last))
    return _full_time(conv, small, big, t_small, t_big)


def probe(conv: ConvShape, channels_last: bool, timer: Timer | None = None, reps: int = 1) -> dict:
    """The faster of float32 and bf16 autocast for ``conv``, timed by ``timer(conv, precision,
    channels_last) -> seconds`` (one forward; default :class:`ConvTimer`).

    Each precision runs ``conv`` cropped to about ``PROBE_MACS`` multiply-adds once untimed,
    then ``reps`` times that crop and one ``SMALL_DIVISOR`` times smaller; the whole
    convolution's time is fitted from the two (a fixed cost per call plus a cost per
    multiply-add: one small crop alone would let the weights' reorder and cast, paid once per
    call, decide). Before that, bf16 is tried once on a crop ``SCOUT_DIVISOR`` times smaller,
    as is float32: when bf16 takes ``GIVE_UP`` times float32's time there, it is given up on
    (its estimate is float32's times that ratio). A bf16 autocast that fails counts as
    unusable. Returns {"choice": "fp32"|"bf16", "ms": {"fp32": .., "bf16": ..} (the whole
    convolution, estimated), "gave_up": bool, "crops": the two crops' [height, width] (one: the whole convolution, when it is
    already small)}."""
    timer = timer or ConvTimer()
    big = conv.scaled(PROBE_MACS)
    small = big.scaled(big.macs() / SMALL_DIVISOR)
    scout = big.scaled(big.macs() / SCOUT_DIVISOR)
    timer(big, "fp32", channels_last)                       # untimed: kernels made, caches warm
    fp32 = _time_precision(conv, small, big, "fp32", channels_last, timer, reps)
    gave_up = False
    try:
        fp32_scout = timer(scout, "fp32", channels_last)
        bf16_scout = timer(scout, "bf16", channels_last)
        if bf16_scout >= GIVE_UP * fp32_scout:
            bf16, gave_up = fp32 * bf16_scout / fp32_scout, True
        else:
            timer(big, "bf16", channels_last)
            bf16 = _time_precision(conv, small, big, "bf16", channels_last, timer, reps)
    except RuntimeError:   # no bf16 kernels for this CPU or build
        bf16, gave_up = math.inf, True
    ms = {"fp32": round(fp32 * 1e3, 3), "bf16": round(bf16 * 1e3, 3) if math.isfinite(bf16) else None}
    crops = [[big.height, big.width]] if big == conv else [[small.height, small.width], [big.height, big.width]]
    return {"choice": "bf16" if bf16 < fp32 else "fp32", "ms": ms, "gave_up": gave_up, "crops": crops}


def cpu_identity(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU's model name and a digest of its feature flags (from ``cpuinfo``; elsewhere,
    what the platform module says)."""
    model, flags = "", ""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "Model", "cpu model") and not model:
                    model = value.strip()
                elif name in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    return {"model": model, "flags": hashlib.blake2b(flags.encode(), digest_size=8).hexdigest()}


def cache_path() -> str:
    """``$XDG_CACHE_HOME/deeplab/precision.json``, else ``~/.cache/deeplab/precision.json``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "deeplab", "precision.json")


def probe_key(conv: ConvShape, channels_last: bool, threads: int | None = None) -> dict:
    """What a cached choice is valid for: CPU, torch version, threads, memory format, the
    convolution (its full shape, not the scaled crop)."""
    import torch

    return {"cpu": cpu_identity(), "torch": torch.__version__,
            "threads": int(threads if threads is not None else torch.get_num_threads()),
            "channels_last": bool(channels_last), "conv": asdict(conv)}


def _digest(key: dict) -> str:
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


def read_cache(path: str) -> dict:
    """The cache's entries (digest -> entry); empty when the file is missing, unreadable or
    not a cache of this version."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(v, dict)}


def _valid(entry: dict, key: dict) -> bool:
    return (entry.get("key") == json.loads(json.dumps(key)) and entry.get("choice") in ("fp32", "bf16")
            and isinstance(entry.get("ms"), dict))


def write_cache(path: str, entries: dict) -> str | None:
    """Write ``entries`` (the ``MAX_ENTRIES`` most recent) atomically; the reason it could
    not, or None."""
    from .util.files import WriteError, write_bytes_atomic

    kept = dict(sorted(entries.items(), key=lambda kv: kv[1].get("when", ""))[-MAX_ENTRIES:])
    data = json.dumps({"version": CACHE_VERSION, "entries": kept}, indent=1, sort_keys=True) + "\n"
    try:
        write_bytes_atomic(path, data.encode())
    except (WriteError, OSError) as e:
        return str(e)
    return None


def choose(conv: ConvShape, channels_last: bool, *, timer: Timer | None = None, path: str | None = None,
           threads: int | None = None) -> dict:
    """The precision for ``conv`` on this machine: the cached entry for its key, else a new
    :func:`probe`, written to the cache. Returns the entry with
    "cached" (bool), "path" and, when the cache could not be written, "not_written"."""
    path = path or cache_path()
    key = probe_key(conv, channels_last, threads)
    digest = _digest(key)
    entries = read_cache(path)
    entry = entries.get(digest)
    if entry is not None and _valid(entry, key):
        return {**entry, "cached": True, "path": path}
    entry = {"key": key, **probe(conv, channels_last, timer), "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    entries[digest] = entry
    why = write_cache(path, entries)
    return {**entry, "cached": False, "path": path, **({"not_written": why} if why else {})}


def describe_choice(conv: ConvShape, entry: dict) -> str:
    """The one log line: the precision chosen, the convolution, the two timings and the cache."""
    ms = entry["ms"]
    bf16 = "not usable" if ms.get("bf16") is None else f"{ms['bf16']:.1f} ms" + (" (estimate; given up)"
                                                                                if entry.get("gave_up") else "")
    what = "bf16 autocast" if entry["choice"] == "bf16" else "float32"
    where = (f"cached in {entry['path']}" if entry["cached"] else
             f"measured now, not cached: {entry['not_written']}" if entry.get("not_written") else
             f"measured now, cached in {entry['path']}")
    crops = entry.get("crops", ())
    how = ("timed whole" if len(crops) < 2 else
           "fitted from crops " + " and ".join("x".join(map(str, c)) for c in crops))
    return (f"precision (--amp auto): {what}; largest convolution {conv.describe()}: fp32 {ms['fp32']:.1f} ms, "
            f"bf16 {bf16} ({how}); {where}")


def resolve_amp(amp: str | None, net, device, *, channels_last: bool = False,
                say: Callable[[str], None] | None = None, timer: Timer | None = None,
                path: str | None = None) -> str | None:
    """What autocast a run uses: None (float32), "bf16" or "fp16". ``amp`` None, "fp32" or
    "none" -> None; "bf16"/"fp16" as given; "auto" -> on the CPU the faster of float32 and
    bf16 for ``net``'s largest convolution (:func:`choose`), said in one line through ``say``;
    on other devices float32 (today's behaviour; ask for bf16 explicitly)."""
    from . import CaffeError

    if amp not in (None,) + AMP_CHOICES:
        raise CaffeError(f"--amp must be one of {', '.join(AMP_CHOICES)}; got {amp!r}")
    if amp in (None, "fp32", "none"):
        return None
    if amp != "auto":
        return amp
    say = say or (lambda line: None)
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind != "cpu":
        say(f"precision (--amp auto): float32 (only the CPU is probed; on {kind} pass --amp bf16 to autocast)")
        return None
    conv = largest_conv(net)
    if conv is None:
        say("precision (--amp auto): float32 (the net has no 2-D convolution to probe)")
        return None
    entry = choose(conv, channels_last, timer=timer, path=path)
    say(describe_choice(conv, entry))
    return "bf16" if entry["choice"] == "bf16" else None
