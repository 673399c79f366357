"""The engine against what a Caffe user would run instead, same net, same input, same run.

Columns (forward time in ms, median of --reps after one warm-up; each net has random weights,
bench/peer_nets.py):
  engine    caffe.net.Net, TEST, inference mode (the project's thread policy, caffe/threads.py)
  compiled  with --compile: the same net compiled (caffe.compiled.compile_net, caffe/compiled.py:
            torch.compile, inductor, frozen weights), one compile per thread count; its first call
            (export + compile + one forward) is printed below the table, the column is steady state;
            the engine's and the compiled forwards alternate (load hits both alike)
  opencv    OpenCV 4.x dnn reading the deploy prototxt + caffemodel (cv2.dnn.readNetFromCaffe),
            run by bench/peer_opencv.py in the side environment .venv-peers (`make
            bench-peers-env`; OpenCV 5, the project's, has no Caffe importer). "-" where that
            OpenCV cannot read the net (its message is printed).
  handmade  bench/reference.py's hand-written LargeFOV module, channels_last (largefov only)
  onnxrt    the net exported by caffe.export to ONNX, on onnxruntime's CPU provider
  caffe     a Caffe build's `caffe time` "Average Forward pass" (only with --caffe PATH; its own
            timer, OpenBLAS threads as the row's): BVLC's with -phase=TEST; a V1-era build (the
            DeepLab fork) in V1 syntax; its output is not compared (`caffe time` prints none)
  unfused   the engine with the planned forward's convolution fusion off (net.fuse = False,
            caffe/inference.py; only with --unfused): before/after in one run
  engine-bf16  with --amp bf16: the engine under CPU bf16 autocast (what deeplab-extract's
            --amp bf16 runs; its diff is flagged only above 3e-2, bf16's round-off)
Each peer's ratio is peer / engine (> 1: the engine is faster); its output is checked against
the engine's (max |diff| / max |engine output|, printed; above 1e-3 is flagged "DIFFERS").
Every net runs at 1 thread and at all the process's cores, and with --busy also while a
second process spins on core 0. Not a test; other load on the machine shows in the numbers.

  make bench-peers-env        # once: .venv-peers with opencv-python-headless<4.11
  .venv/bin/python bench/bench_peers.py [--nets largefov:321,narrow,fcn8s:500,...] [--reps 3]
      [--threads 1,all] [--busy] [--caffe /path/to/caffe] [--unfused] [--compile] [--amp bf16]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from caffe import threads  # noqa: E402

threads.configure()        # before torch loads: the policy the project's commands run with

import numpy as np  # noqa: E402
import torch  # noqa: E402
from google.protobuf import text_format  # noqa: E402

import peer_nets  # noqa: E402
from bench_threads import spin  # noqa: E402

PEERS_PYTHON = os.path.join(ROOT, ".venv-peers", "bin", "python")
DEFAULT_NETS = "largefov:321,largefov:513,narrow:321,fcn8s:500,segnet:360x480,resnet50:224,enet:512x1024"


def parse_net(item: str) -> tuple[str, tuple[int, int]]:
    name, _, size = item.partition(":")
    if not size:
        return name, peer_nets.NETS[name]
    h, _, w = size.partition("x")
    return name, (int(h), int(w or h))


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def interleaved_ms(fns, reps: int) -> list[float]:
    """Median ms of each of ``fns``, their calls alternating (load hits each alike)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got, np.float32).reshape(want.shape)
    return float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-12)


class Case:
    """One net at one input size: the engine's net, its files for the peers, the peers."""

    def __init__(self, name: str, hw, tmp: str, with_onnx: bool, unfused: bool = False, compile: bool = False):
        self.name, self.hw = name, hw
        self.net, self.x, self.blob = peer_nets.build(name, hw)
        self.unfused_net = None
        if unfused:
            self.unfused_net = peer_nets.build(name, hw)[0]
            self.unfused_net.fuse = False
        self.compiled = None
        if compile:
            from caffe.compiled import Compiled
            self.compiled = Compiled(self.net)    # what compile_net(net) hooks in; here beside the engine
        with torch.inference_mode():
            self.want = self.net({"data": self.x}, outputs=[self.blob])[self.blob].numpy()
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=tmp)
        self.prototxt = os.path.join(self.dir, "deploy.prototxt")
        with open(self.prototxt, "w") as f:
            f.write(text_format.MessageToString(peer_nets.deploy_param(name, hw)))
        self.weights = os.path.join(self.dir, "net.caffemodel")
        self.net.save(self.weights)
        self.input = os.path.join(self.dir, "input.npy")
        np.save(self.input, self.x.numpy())
        self.onnx = None
        if with_onnx:
            from caffe import export as ex
            self.onnx = os.path.join(self.dir, "net.onnx")
            try:
                ex.export(self.net, onnx=self.onnx)
            except Exception as e:   # an exporter failure is a result here, not a crash
                print(f"  {name}: ONNX export failed: {str(e).splitlines()[0]}")
                self.onnx = None
        self.caffe_form = None       # (NetParameter, V1?, flags, note, model file): what a Caffe build reads
        self.handmade = None
        if name == "largefov":
            from reference import LargeFOV
            self.handmade = LargeFOV(21).eval()
            self.handmade.load_from_net(self.net)
            self.handmade.to(memory_format=torch.channels_last)     # as bench_engine.py runs it

    def engine(self) -> np.ndarray:
        with torch.inference_mode():
            return self.net({"data": self.x}, outputs=[self.blob])[self.blob]

    def run_unfused(self):
        with torch.inference_mode():
            return self.unfused_net({"data": self.x}, outputs=[self.blob])[self.blob]

    def run_bf16(self) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self.net({"data": self.x}, outputs=[self.blob])[self.blob].float()

    def run_compiled(self) -> torch.Tensor:
        with torch.inference_mode():
            return self.compiled.forward({"data": self.x}, frozenset([self.blob]))[self.blob]

    def run_handmade(self):
        with torch.inference_mode():
            return self.handmade.upsample(self.handmade(self.x.contiguous(memory_format=torch.channels_last)))


def opencv(case: Case, n_threads: int, reps: int, python: str) -> tuple[float | None, str]:
    """(median ms or None, note) from the OpenCV 4 worker."""
    if not os.path.exists(python):
        return None, "no .venv-peers (make bench-peers-env)"
    out = os.path.join(case.dir, "opencv.npy")
    proc = subprocess.run([python, os.path.join(ROOT, "bench", "peer_opencv.py"), case.prototxt, case.weights,
                           case.input, case.blob, out, "--threads", str(n_threads), "--reps", str(reps)],
                          capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
    res = json.loads(lines[-1])
    if "error" in res:
        return None, res["error"]
    return statistics.median(res["times"]) * 1e3, f"diff {rel_diff(np.load(out), case.want):.1e}"


# runs a command and prints its peak resident set size (KiB) as the last line
_MAXRSS = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")


def _run_caffe(binary: str, args: list, n_threads: int) -> tuple[str, float]:
    """(output, peak MiB) of ``binary args`` at ``n_threads`` BLAS threads."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n_threads), OMP_NUM_THREADS=str(n_threads),
               MKL_NUM_THREADS=str(n_threads))
    proc = subprocess.run([sys.executable, "-c", _MAXRSS, binary] + args, capture_output=True, text=True, env=env)
    out, _, maxrss = (proc.stderr + proc.stdout).rstrip().rpartition("\n")
    return out, int(maxrss) / 1024 if maxrss.isdigit() else float("nan")


def _last_line(out: str) -> str:
    """The reason a Caffe run failed: its last glog FATAL/ERROR line (a stack trace follows it),
    else its last line."""
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[FE]\d{8} ", line)]
    return (errors or lines or ["failed"])[-1]


def _write_model(path: str, param, v1: bool) -> str:
    """``param`` written to ``path`` (in V1 syntax with ``v1``; ValueError where V1 cannot say it)."""
    text = text_format.MessageToString(peer_nets.v1_param(param) if v1 else param)
    with open(path, "w") as f:
        f.write(text)
    return path


def caffe_form(case: Case, binary: str) -> str | None:
    """Find the form of the deploy net this Caffe build reads; None or the reason it reads none.
    BVLC's build reads it as is, with ``-phase=TEST``; a V1-era build such as the DeepLab fork
    (no -phase flag) gets it in V1 syntax (peer_nets.v1_param); a final Interp the build lacks
    is left out. Sets ``case.caffe_form`` to (NetParameter, V1?, flags, note, the model file)."""
    param, flags, v1, notes = peer_nets.deploy_param(case.name, case.hw), ["-phase=TEST"], False, []
    for _ in range(3):
        try:
            model = _write_model(os.path.join(case.dir, "caffe_time.prototxt"), param, v1)
        except ValueError as e:
            return str(e)
        out, _ = _run_caffe(binary, ["time", f"-model={model}", "-iterations=1"] + flags, 1)
        if "Average Forward pass" in out:
            case.caffe_form = (param, v1, flags, ", ".join(notes) or "as the engine's", model)
            return None
        if "unknown command line flag" in out and not v1:
            flags, v1 = [], True
            notes.append("V1 syntax, TRAIN phase")
        elif (param.layer[-1].type == "Interp"
              and re.search(r"[Uu]nknown layer type|registry.count\(type\) == 1|no field named \"interp_param\"", out)):
            del param.layer[-1]
            notes.append("without the final Interp")
        else:
            return _last_line(out)
    return _last_line(out)


def caffe_time(case: Case, binary: str, n_threads: int, reps: int) -> tuple[float | None, str]:
    """(ms, note): a Caffe build's `caffe time` "Average Forward pass" at ``n_threads`` BLAS
    threads (`caffe time` runs forward and backward with its fillers' weights; values do not
    change its time)."""
    if case.caffe_form is None and (why := caffe_form(case, binary)):
        return None, why
    _, _, flags, note, model = case.caffe_form
    out, _ = _run_caffe(binary, ["time", f"-model={model}", f"-iterations={reps}"] + flags, n_threads)
    m = re.search(r"Average Forward pass:\s*([0-9.]+)\s*ms", out)
    return (float(m.group(1)), note) if m else (None, _last_line(out))


def caffe_test_peak_mib(case: Case, binary: str, reps: int) -> tuple[float | None, str]:
    """(peak MiB, note) of a Caffe build's `caffe test` of the deploy net: TEST-phase forwards
    only (no diffs), the output consumed by a Silence layer so that `caffe test` prints no
    per-element scores."""
    if case.caffe_form is None and (why := caffe_form(case, binary)):
        return None, why
    param, v1, flags, note, _ = case.caffe_form
    silenced = type(param)()
    silenced.CopyFrom(param)
    silenced.layer.add(name="silence", type="Silence", bottom=[silenced.layer[-1].top[0]])
    model = _write_model(os.path.join(case.dir, "caffe_test.prototxt"), silenced, v1)
    out, peak = _run_caffe(binary, ["test", f"-model={model}", f"-weights={case.weights}",
                                    f"-iterations={1 + reps}"] + flags, 1)
    return (peak, note) if "Loss: " in out else (None, _last_line(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=DEFAULT_NETS, help=f"name[:H[xW]], comma separated (default {DEFAULT_NETS})")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", default="1,all", help="thread counts, 'all' = the process's cores (default 1,all)")
    ap.add_argument("--busy", action="store_true", help="also measure with a process spinning on core 0")
    ap.add_argument("--opencv-python", default=PEERS_PYTHON, help="python of the OpenCV 4 environment")
    ap.add_argument("--caffe", help="a Caffe build's `caffe` binary, for a `caffe time` column")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false")
    ap.add_argument("--unfused", action="store_true", help="add a column: the engine without convolution fusion")
    ap.add_argument("--compile", action="store_true", help="add the engine compiled with torch.compile (inductor)")
    ap.add_argument("--amp", choices=["bf16"], help="add the engine under CPU autocast in this dtype (engine-bf16)")
    args = ap.parse_args(argv)
    cores = threads.available_cores()
    counts = sorted({cores if t == "all" else int(t) for t in args.threads.split(",")})
    ort = None
    if args.onnx:
        try:
            import onnxruntime as ort
        except ImportError:
            print("onnxruntime is not installed: no onnxrt column")
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    amx = "AMX" if "amx" in lscpu else "no AMX"
    print(f"CPU: {cores} cores available ({amx}); torch {torch.__version__}"
          + (f", onnxruntime {ort.__version__}" if ort else "")
          + f"; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; median of {args.reps} forwards (ms); "
          "ratio = peer / engine (> 1: engine faster)")
    head = f"{'net':<10} {'input':>9} {'thr':>3} {'load':<4} {'engine':>8} " \
           + (f"{'compiled':>8} {'ratio':>5} " if args.compile else "") + f"{'opencv':>8} {'ratio':>5} " \
           f"{'handmade':>8} {'ratio':>5} {'onnxrt':>8} {'ratio':>5}" + (f" {'caffe':>8} {'ratio':>5}" if args.caffe else "") \
        + (f" {'unfused':>8} {'ratio':>5}" if args.unfused else "") + (f" {'engine-bf16':>11} {'ratio':>5}" if args.amp else "")
    print(head)
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.nets.split(","):
            name, hw = parse_net(item)
            case = Case(name, hw, tmp, ort is not None, args.unfused, args.compile)
            if case.unfused_net is not None:
                notes.append(f"{name} {hw[0]}x{hw[1]}: unfused diff {rel_diff(case.run_unfused().numpy(), case.want):.1e}")
            if args.amp:
                notes.append(f"{name} {hw[0]}x{hw[1]}: engine-bf16 diff {rel_diff(case.run_bf16().numpy(), case.want):.1e}")
            session = None
            if ort is not None and case.onnx:
                session_for = {}
                for n in counts:
                    o = ort.SessionOptions()
                    o.intra_op_num_threads = n
                    session_for[n] = ort.InferenceSession(case.onnx, o, providers=["CPUExecutionProvider"])
                session = session_for
                got = session[counts[0]].run([case.blob], {"data": case.x.numpy()})[0]
                notes.append(f"{name} {hw[0]}x{hw[1]}: onnxrt diff {rel_diff(got, case.want):.1e}")
            if case.handmade is not None:
                notes.append(f"{name} {hw[0]}x{hw[1]}: handmade diff "
                             f"{rel_diff(case.run_handmade().numpy(), case.want):.1e}")
            firsts: dict[int, float] = {}
            for busy in ((False, True) if args.busy else (False,)):
                hog = spin() if busy else None
                try:
                    for n in counts:
                        torch.set_num_threads(n)
                        cm = None
                        if case.compiled is None:
                            e = median_ms(case.engine, args.reps)
                        else:
                            if n not in firsts:     # one compile per thread count
                                t = time.perf_counter()
                                got = case.run_compiled().numpy()
                                firsts[n] = time.perf_counter() - t
                                notes.append(f"{name} {hw[0]}x{hw[1]}: compiled, {n} thread(s): first call "
                                             f"{firsts[n]:.1f} s (export + compile + one forward), "
                                             f"diff {rel_diff(got, case.want):.1e}")
                            e, cm = interleaved_ms([case.engine, case.run_compiled], args.reps)
                        cv, note = opencv(case, n, args.reps, args.opencv_python)
                        if n == counts[0] and not busy:
                            notes.append(f"{name} {hw[0]}x{hw[1]}: opencv {note}")
                        hm = median_ms(case.run_handmade, args.reps) if case.handmade is not None else None
                        ox = None
                        if session is not None:
                            feed = {"data": case.x.numpy()}
                            ox = median_ms(lambda: session[n].run([case.blob], feed), args.reps)
                        cells = ([cm] if case.compiled is not None else []) + [cv, hm, ox]
                        if args.caffe:
                            cf, cnote = caffe_time(case, args.caffe, n, args.reps)
                            if n == counts[0] and not busy:
                                notes.append(f"{name} {hw[0]}x{hw[1]}: caffe {cnote}")
                            cells.append(cf)
                        if args.unfused:
                            cells.append(median_ms(case.run_unfused, args.reps))
                        row_cells = len(cells)
                        if args.amp:
                            cells.append(median_ms(case.run_bf16, args.reps))
                        row = f"{name:<10} {hw[0]:>4}x{hw[1]:<4} {n:>3} {'busy' if busy else 'idle':<4} {e:8.1f}"
                        for k, v in enumerate(cells):
                            width = 11 if k >= row_cells else 8
                            row += f" {v:{width}.1f} {v / e:5.2f}" if v is not None else f" {'-':>{width}} {'':>5}"
                        print(row, flush=True)
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
    for line in notes:
        flag = re.search(r"diff ([0-9.e+-]+)", line)
        limit = 3e-2 if "bf16" in line else 1e-3
        print(line + ("  DIFFERS" if flag and float(flag.group(1)) > limit else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
