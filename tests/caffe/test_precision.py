"""``--amp auto`` (caffe/precision.py): the probe picks what its timer says is faster, the cache
is reused per key and survives corruption, the log line, and the ``caffe`` command and pycaffe
never probe (they stay float32). No test times anything: the timer is a fake whose "seconds" are
a fixed cost plus a cost per multiply-add."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import caffe
from caffe import CaffeError, precision, tool
from caffe.net import Net
from caffe.precision import ConvShape
from test_caffe_tool import tiny  # noqa: F401  (the filled tiny solver)

FC6 = ConvShape("fc6", 512, 61, 61, 1024, (3, 3), (1, 1), (12, 12), (12, 12), 1)


class FakeTimer:
    """Seconds = fixed[precision] + per_mac[precision] * multiply-adds; records each call."""

    def __init__(self, fixed, per_mac):
        self.fixed, self.per_mac, self.calls = fixed, per_mac, []

    def __call__(self, conv, prec, channels_last):
        self.calls.append((conv, prec, channels_last))
        return self.fixed[prec] + self.per_mac[prec] * conv.macs()


FAST_BF16 = dict(fixed={"fp32": 0.002, "bf16": 0.004}, per_mac={"fp32": 3e-11, "bf16": 1.5e-11})
SLOW_BF16 = dict(fixed={"fp32": 0.002, "bf16": 0.004}, per_mac={"fp32": 3e-11, "bf16": 6e-10})  # 20x


def test_conv_shape_macs_and_crops_by_hand():
    # fc6 of LargeFOV at 61 x 61: 61*61 outputs x 1024 x 512 x 9 multiply-adds.
    assert FC6.out_hw() == (61, 61) and FC6.macs() == 61 * 61 * 1024 * 512 * 9
    crop = FC6.scaled(4e9)   # sqrt(4e9 / 17.56e9) = 0.477 -> 29 x 29, same channels and geometry
    assert (crop.height, crop.width, crop.out, crop.dilation, crop.pad) == (29, 29, 1024, (12, 12), (12, 12))
    assert FC6.scaled(1e20) == FC6                       # never larger
    nopad = ConvShape("c", 8, 40, 40, 8, (3, 3), (1, 1), (0, 0), (4, 4), 1)
    assert nopad.scaled(1).height == 9                   # at least the dilated kernel's extent, 9
    assert "dilation 12" in FC6.describe() and FC6.describe().startswith("fc6 512->1024 3x3")


def test_largest_conv_is_chosen_by_multiply_adds_from_the_built_net():
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, 3, 64, 48]))
    n.wide = caffe.layers.Convolution(n.data, num_output=8, kernel_size=3, pad=1)            # 64*48*8*3*9
    n.pool = caffe.layers.Pooling(n.wide, kernel_size=4, stride=4)                          # 16 x 12
    n.deep = caffe.layers.Convolution(n.pool, num_output=64, kernel_size=3, pad=2, dilation=2)  # 16*12*64*8*9
    net = Net(n.to_proto(), "TEST")
    conv = precision.largest_conv(net)
    assert (conv.layer, conv.macs()) == ("deep", 16 * 12 * 64 * 8 * 9)   # 884736 > 663552 of "wide"
    assert (conv.channels, conv.height, conv.width, conv.dilation) == (8, 16, 12, (2, 2))
    n2 = caffe.NetSpec()
    n2.data = caffe.layers.Input(shape=dict(dim=[1, 3, 8, 8]))
    n2.relu = caffe.layers.ReLU(n2.data)
    assert precision.largest_conv(Net(n2.to_proto(), "TEST")) is None


@pytest.mark.parametrize("rates, choice", [(FAST_BF16, "bf16"), (dict(fixed=FAST_BF16["fixed"], per_mac={
    "fp32": 3e-11, "bf16": 4e-11}), "fp32")])
def test_probe_picks_what_its_timer_says_is_faster(rates, choice):
    timer = FakeTimer(**rates)
    found = precision.probe(FC6, True, timer)
    assert found["choice"] == choice and not found["gave_up"]
    # The fit through two crops recovers fixed + per_mac * MACs of the whole convolution.
    for p in ("fp32", "bf16"):
        expect = rates["fixed"][p] + rates["per_mac"][p] * FC6.macs()
        assert found["ms"][p] == pytest.approx(expect * 1e3, rel=1e-3)
    assert all(cl for _, _, cl in timer.calls)           # in the run's memory format
    assert max(c.macs() for c, _, _ in timer.calls) <= 1.1 * precision.PROBE_MACS   # only crops are run


def test_a_hopeless_bf16_is_given_up_on_small():
    timer = FakeTimer(**SLOW_BF16)
    found = precision.probe(FC6, False, timer)
    assert found["choice"] == "fp32" and found["gave_up"]
    bf16_runs = [c for c, p, _ in timer.calls if p == "bf16"]
    assert len(bf16_runs) == 1 and bf16_runs[0].macs() <= precision.PROBE_MACS / 10   # one small try
    assert found["ms"]["bf16"] > 8 * found["ms"]["fp32"]


def test_a_failing_bf16_counts_as_unusable():
    def timer(conv, prec, cl):
        if prec == "bf16":
            raise RuntimeError("no bf16 kernel")
        return 0.01
    found = precision.probe(FC6, False, timer)
    assert found == {**found, "choice": "fp32", "gave_up": True} and found["ms"]["bf16"] is None


def test_one_noisy_run_cannot_make_the_convolution_look_free():
    small, big = FC6.scaled(1e9), FC6.scaled(4e9)
    # the small crop as slow as the big one (a descheduled run): the fixed part is capped at half
    t = precision._full_time(FC6, small, big, 0.1, 0.1)
    assert t == pytest.approx(0.1 + 0.5 * 0.1 / big.macs() * (FC6.macs() - big.macs()))


def test_the_cache_is_reused_and_keyed(tmp_path):
    path = str(tmp_path / "deeplab" / "precision.json")
    timer = FakeTimer(**FAST_BF16)
    first = precision.choose(FC6, True, timer=timer, path=path, threads=2)
    assert first["choice"] == "bf16" and not first["cached"]
    n = len(timer.calls)
    again = precision.choose(FC6, True, timer=timer, path=path, threads=2)
    assert again["cached"] and again["ms"] == first["ms"] and len(timer.calls) == n   # no new timing
    # another key probes again: thread count, memory format, the convolution's shape
    for kw in (dict(conv=FC6, channels_last=True, threads=1), dict(conv=FC6, channels_last=False, threads=2),
               dict(conv=FC6.scaled(1e9), channels_last=True, threads=2)):
        assert not precision.choose(kw["conv"], kw["channels_last"], timer=timer, path=path,
                                    threads=kw["threads"])["cached"]
        assert len(timer.calls) > n
        n = len(timer.calls)
    entries = json.loads(open(path).read())["entries"]
    assert len(entries) == 4
    key = next(iter(entries.values()))["key"]
    assert set(key) == {"cpu", "torch", "threads", "channels_last", "conv"} and key["torch"] == torch.__version__
    assert set(key["cpu"]) == {"model", "flags"}


def test_the_cpu_key_comes_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16 sse\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16 sse\n")
    a = precision.cpu_identity(str(info))
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse amx_bf16 avx512_bf16\n")
    b = precision.cpu_identity(str(info))
    assert a["model"] == b["model"] == "AMD EPYC" and a["flags"] != b["flags"]


@pytest.mark.parametrize("junk", [b"{not json", b"[]", b'{"version": 1, "entries": 3}', b"\xff\xfe", b""])
def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path, junk):
    path = tmp_path / "precision.json"
    path.write_bytes(junk)
    found = precision.choose(FC6, True, timer=FakeTimer(**FAST_BF16), path=str(path), threads=2)
    assert not found["cached"] and found["choice"] == "bf16"
    data = json.loads(path.read_text())
    assert data["version"] == precision.CACHE_VERSION and len(data["entries"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "precision.json"]   # no temporary left
    assert precision.choose(FC6, True, timer=FakeTimer(**FAST_BF16), path=str(path), threads=2)["cached"]


def test_an_unwritable_cache_is_said_not_fatal(tmp_path):
    (tmp_path / "file").write_text("")
    found = precision.choose(FC6, True, timer=FakeTimer(**FAST_BF16), path=str(tmp_path / "file" / "p.json"))
    assert found["choice"] == "bf16" and "not_written" in found
    assert "not cached" in precision.describe_choice(FC6, found)


def test_the_cache_location_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert precision.cache_path() == str(tmp_path / "x" / "deeplab" / "precision.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert precision.cache_path() == str(tmp_path / "home" / ".cache" / "deeplab" / "precision.json")


def _small_net():
    n = caffe.NetSpec()
    n.data = caffe.layers.Input(shape=dict(dim=[1, 3, 32, 32]))
    n.conv = caffe.layers.Convolution(n.data, num_output=16, kernel_size=3, pad=1)
    return Net(n.to_proto(), "TEST")


def test_resolve_amp_and_its_log_line(tmp_path):
    net, lines, path = _small_net(), [], str(tmp_path / "p.json")
    timer = FakeTimer(fixed={"fp32": 1e-4, "bf16": 1e-4}, per_mac={"fp32": 3e-9, "bf16": 1e-9})
    assert precision.resolve_amp("auto", net, "cpu", say=lines.append, timer=timer, path=path) == "bf16"
    assert len(lines) == 1
    line = lines[0]
    ms = json.loads(open(path).read())["entries"].popitem()[1]["ms"]
    assert line.startswith("precision (--amp auto): bf16 autocast; largest convolution conv 3->16 3x3 at 32x32")
    assert f"fp32 {ms['fp32']:.1f} ms" in line and f"bf16 {ms['bf16']:.1f} ms" in line
    assert f"(timed whole); measured now, cached in {path}" in line
    precision.resolve_amp("auto", net, torch.device("cpu"), say=lines.append, timer=timer, path=path)
    assert lines[1].endswith(f"cached in {path}") and "measured now" not in lines[1]
    slow = FakeTimer(fixed={"fp32": 1e-4, "bf16": 1e-4}, per_mac={"fp32": 3e-9, "bf16": 6e-8})
    assert precision.resolve_amp("auto", net, "cpu", say=lines.append, timer=slow, path=str(tmp_path / "q")) is None
    assert "float32;" in lines[2] and "given up" in lines[2]


def test_fp32_forces_float32_and_cuda_keeps_it_without_probing(tmp_path):
    def timer(*a):
        raise AssertionError("probed")
    net, lines = _small_net(), []
    for amp in (None, "fp32", "none"):
        assert precision.resolve_amp(amp, net, "cpu", say=lines.append, timer=timer) is None
    for amp in ("bf16", "fp16"):
        assert precision.resolve_amp(amp, net, "cpu", say=lines.append, timer=timer) == amp
    assert lines == []
    assert precision.resolve_amp("auto", net, torch.device("cuda", 0), say=lines.append, timer=timer) is None
    assert lines == ["precision (--amp auto): float32 (only the CPU is probed; on cuda pass --amp bf16 to autocast)"]
    with pytest.raises(CaffeError, match="--amp must be one of auto, fp32, none, bf16, fp16; got 'bf32'"):
        precision.resolve_amp("bf32", net, "cpu")


def test_caffe_command_and_pycaffe_stay_float32(tiny, tmp_path, monkeypatch):  # noqa: F811
    """Caffe's numbers stay exact: ``caffe train``, pycaffe's Net and solvers never probe or autocast,
    whatever DEEPLAB_AMP says (it is the deeplab commands' knob)."""
    def refuse(*a, **k):
        raise AssertionError("caffe/pycaffe reached the precision probe")
    monkeypatch.setattr(precision, "probe", refuse)
    monkeypatch.setattr(precision, "choose", refuse)
    monkeypatch.setenv("DEEPLAB_AMP", "bf16")
    seen = []
    real = torch.autocast.__init__

    def watch(self, *a, **k):
        seen.append(k.get("dtype", a[1] if len(a) > 1 else None))
        real(self, *a, **k)
    monkeypatch.setattr(torch.autocast, "__init__", watch)
    assert tool.main(["train", f"--solver={tiny / 'solver.prototxt'}", f"--log_dir={tmp_path / 'log'}"]) == 0
    solver = caffe.SGDSolver(str(tiny / "solver.prototxt"))
    solver.step(1)
    net = solver.net
    out = net.forward()
    assert all(v.dtype == np.float32 for v in out.values())
    assert all(b.data.dtype == np.float32 for b in net.blobs.values())
    assert seen == []   # no autocast anywhere
