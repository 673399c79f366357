"""Caffe's SGD solver over a :class:`caffe.net.Net`, as BVLC Caffe's Solver / SGDSolver.

One iteration (Solver::Step): clear the diffs; test every ``test_interval``; ``iter_size``
forward/backward passes accumulating diffs; average the diffs over processes (Caffe's
multi-GPU P2PSync does the same); then SGDSolver::ApplyUpdate (the learning-rate policy,
ClipGradients, and per param Normalize, Regularize, ComputeUpdateValue, w -= v: these live
in caffe.solvers.update). Snapshots are ``<prefix>_iter_N.caffemodel`` + ``.solverstate``. Log lines
are glog-formatted as Caffe prints them, so Caffe log parsers read them.

Randomness is a function of (seed, iteration): dropout is reseeded from (seed, iteration,
pass, rank) before each pass and data positions follow the iteration (caffe.data.image_seg),
so a run resumed from a snapshot continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time

import numpy as np
import torch

from .. import CaffeError, checks
from ..model_io import SolverState, load_solverstate, save_solverstate
from .update import check_solver, learning_rate, solver_optimizer

SIGNAL_EFFECTS = ("stop", "snapshot", "none")


# ------------------------------------------------------------------ log lines
class CaffeLog:
    """Writes glog-formatted lines (``I1125 10:00:00.000000 12345 solver.cpp:228] ...``)
    to a file and to stderr (through tqdm so a progress bar stays intact).

    As glog does with a log file it cannot create or write (a folder in the way, no
    permission, a full disk): the problem is reported once on stderr, the file is dropped
    (removed if nothing reached it) and logging goes on on stderr; the work goes on."""

    def __init__(self, path: str | None = None, stderr: bool = True):
        self.file = None
        self.path = path
        self.stderr = stderr
        self.pid = os.getpid()
        if path:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self.file = open(path, "a", buffering=1)
                self.file.write(time.strftime("Log file created at: %Y/%m/%d %H:%M:%S\n"))
            except OSError as e:
                self._drop(e)

    def _line(self, where: str, message: str, level: str) -> str:
        now = time.time()
        t = time.localtime(now)
        return (f"{level}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}."
                f"{int((now % 1) * 1e6):06d} {self.pid:5d} {where}] {message}")

    def _drop(self, error: OSError) -> None:
        """Report a log file that cannot be written, once, and stop writing it."""
        from ..util.files import _reason
        f, self.file = self.file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        drop_empty_log(self.path)
        print(self._line("logging.cc:0", f"Could not write the log file {self.path} ({_reason(error)}): "
                                         "logging to stderr only", "W"), file=sys.stderr, flush=True)

    def __call__(self, where: str, message: str, level: str = "I") -> None:
        line = self._line(where, message, level)
        if self.file:
            try:
                self.file.write(line + "\n")
            except OSError as e:
                self._drop(e)
        if self.stderr:
            from tqdm import tqdm
            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        """Close the log file."""
        if self.file:
            try:
                self.file.close()
            except OSError as e:
                self.file = None
                self._drop(e)
            self.file = None


def drop_empty_log(path: str | None) -> None:
    """Remove the log file ``path`` if it is empty, and a ``caffe.INFO`` link beside it that
    points to it (glog's link to the latest log)."""
    if not path:
        return
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            os.unlink(path)
        link = os.path.join(os.path.dirname(path) or ".", "caffe.INFO")
        if os.path.islink(link) and os.readlink(link) == os.path.basename(path) and not os.path.exists(path):
            os.unlink(link)
    except OSError:
        pass


def _g(x: float) -> str:
    """A float as C++'s default ostream prints it (6 significant digits)."""
    return f"{x:.6g}"


def output_lines(kind: str, names, values, loss_weights) -> list[str]:
    """``    Train net output #k: name = v (* w = wv loss)`` lines, one per blob element."""
    lines, k = [], 0
    for name, vals in zip(names, values):
        w = loss_weights.get(name, 0.0)
        for v in vals:
            extra = f" (* {_g(w)} = {_g(w * v)} loss)" if w else ""
            lines.append(f"    {kind} net output #{k}: {name} = {_g(v)}{extra}")
            k += 1
    return lines


# ------------------------------------------------------------------ the solver
BUDGET_CHECK_EVERY = 10  # iterations between two time-budget checks
REQUEST_CHECK_EVERY = 10  # iterations between two agreements on signal requests over processes


class Solver:
    """Runs Caffe's SGD on ``net``.

    ``train_feed(batch_index)`` returns the net's input tensors for one forward pass (pass
    ``k`` of iteration ``it`` has batch index ``it * iter_size + k``); ``test_nets`` /
    ``test_feeds`` the same for testing. ``dist`` is a caffe.solvers.parallel.Dist (rank, world)
    or None; ``log`` a CaffeLog or None; ``amp`` None, "bf16" or "fp16". ``sigint_effect``
    and ``sighup_effect`` (attributes: "stop", "snapshot" or "none") say what the signals do
    during ``solve``, as ``caffe train``'s flags of those names.
    """

    sigint_effect = "stop"
    sighup_effect = "snapshot"
    time_budget: float | None = None  # seconds for solve's steps; max_iter is lowered to fit (not Caffe)

    def __init__(self, param, net, train_feed, test_nets=(), test_feeds=(), *, seed: int = 0,
                 device="cpu", dist=None, log=None, amp=None, channels_last=False, progress=True):
        check_solver(param)
        if net.backward_refusals:   # Caffe would abort at the first iteration's Backward
            raise CaffeError(next(iter(net.backward_refusals.values())))
        self.param, self.net, self.train_feed = param, net, train_feed
        self.test_nets, self.test_feeds = list(test_nets), list(test_feeds)
        self.seed, self.device = int(seed), torch.device(device)
        self.rank, self.world = (dist.rank, dist.world) if dist is not None else (0, 1)
        if self.rank == 0 and len(self.test_nets) != len(param.test_iter):
            raise CaffeError(f"solver: {len(self.test_nets)} test net(s) but {len(param.test_iter)} test_iter "
                               f"value(s); give one per test net")
        self.dist = dist
        self.log = log if (log is not None and self.rank == 0) else None
        self.amp = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        self.channels_last = channels_last
        self.progress = progress and self.rank == 0
        self.params = net.learnable_params()
        # Which blobs get a diff (lr_mult 0: none unless force_backward) the net decided when built.
        for tn in self.test_nets:
            share_weights(net, tn)
        self.sgd = solver_optimizer(self.params, param)
        # fp16 autocast: torch's dynamic loss scaling (scale 2^16, halved on overflow, doubled after
        # 2000 good steps); bf16 and float32 need none (the scaler is then a no-op).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.model = self._distributed(net) if self.world > 1 else net
        self.iter, self.current_step = 0, 0
        self._losses: list[torch.Tensor] = []
        self._kept: dict[int, dict] = {}     # fp16: this iteration's inputs, by feed index, for a redo
        self._redo = False
        self.last_outputs: dict[str, torch.Tensor] = {}
        self._request = None  # "stop" / "snapshot", set by signals
        self.stopped_early = False
        self._planned_max_iter: int | None = None  # the solver's max_iter before a time budget changed it

    # -------------------------------------------------------------- helpers
    def _info(self, where: str, msg: str, level: str = "I") -> None:
        if self.log is not None:
            self.log(where, msg, level)

    def _inputs(self, feed, index: int) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in feed(index).items():
            v = v.to(self.device, non_blocking=True)
            if self.channels_last and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _reseed(self, k: int) -> None:
        """Dropout (any torch RNG use) as a function of (seed, iteration, pass, rank)."""
        s = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.iter, k, self.rank]).generate_state(2)
        torch.manual_seed(int(s[0]) << 32 | int(s[1]))

    def _update_smoothed(self, loss: torch.Tensor, start_iter: int) -> None:
        """Caffe's UpdateSmoothedLoss: the mean loss of the last ``average_loss`` iterations
        (kept as a window and summed when shown, so float round-off does not drift)."""
        n = self.param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
        else:
            self._losses[(self.iter - start_iter) % n] = loss

    def _loss_window(self) -> torch.Tensor:
        """The kept losses as one tensor on the solver's device (pycaffe's come from the host,
        the final display's from the device: stacked where they meet)."""
        return torch.stack([torch.as_tensor(v).detach().float().to(self.device) for v in self._losses])

    def smoothed(self) -> float:
        """The smoothed loss that Caffe's display line shows (the one host sync of a display)."""
        return float(self._loss_window().mean()) if self._losses else math.nan

    # -------------------------------------------------------------- one iteration
    def _distributed(self, net):
        """The net inside DistributedDataParallel: gradients averaged over processes in buckets
        while backward runs (Caffe's multi-GPU sync, overlapped); each process keeps its own
        running statistics (buffers are not broadcast), as each Caffe solver did."""
        from torch.nn.parallel import DistributedDataParallel
        if not any(p.param.requires_grad for p in self.params):
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False, find_unused_parameters=True)

    def release(self) -> None:
        """Drop the DistributedDataParallel wrapper (and with it its reducer's hold on the
        process group), so the group can then be destroyed deterministically."""
        if self.model is not self.net:
            self.model = self.net
            import gc
            gc.collect()

    def forward_backward(self) -> torch.Tensor:
        """The ``iter_size`` passes of the current iteration; returns their mean loss. Gradients
        are synchronised over processes in the last pass only (``no_sync`` before it)."""
        net, total, n = self.net, None, self.param.iter_size
        kept, self._kept = (self._kept if self._redo else {}), {}
        self._redo = False
        for k in range(n):
            index = self.iter * n + k
            # An iteration redone after an fp16 overflow takes the same batches again from here:
            # asking the feed for an earlier index would restart its loader (and its workers).
            inputs = kept[index] if index in kept else self._inputs(self.train_feed, index)
            if self.scaler.is_enabled():
                self._kept[index] = inputs
            self._reseed(k)
            later = k < n - 1 and self.model is not net
            with self.model.no_sync() if later else contextlib.nullcontext():
                with self._autocast():
                    blobs = self.model(inputs)
                    loss = net.loss(blobs)
                self._check_finite(loss.detach(), blobs)
                self.scaler.scale(loss).backward()
            total = loss.detach().float() if total is None else total + loss.detach().float()
            if k == n - 1:
                self.last_outputs = {b: blobs[b].detach() for b in net.output_names if b in blobs}
            del blobs, loss
        return total / n

    def _check_finite(self, loss: torch.Tensor, blobs: dict) -> None:
        """The loss must be finite; the error names the non-finite loss blobs. On a device the
        check waits for the next display (caffe.checks), so it keeps only small flags."""
        names = [b for b in self.net.loss_weights if b in blobs]
        finite = torch.stack([torch.isfinite(blobs[b].detach()).all() for b in names]) if names else None
        it = self.iter

        def error():
            bad = [b for b, ok in zip(names, finite.tolist() if finite is not None else []) if not ok]
            return CaffeError(f"iteration {it}: the loss is {float(loss):g} (non-finite loss blob(s) "
                              f"{', '.join(bad) or '?'}): training diverged or the data holds NaN/Inf; "
                              "lower base_lr or check the inputs, and resume from the last snapshot")
        checks.check(~torch.isfinite(loss), error)

    def _finish_gradients(self) -> bool:
        """Undo fp16 loss scaling; False (the iteration is redone at half the scale) if the
        gradients overflowed."""
        if not self.scaler.is_enabled():
            return True
        self.scaler.unscale_(self.sgd)
        grads = [p.param.grad for p in self.params if p.param.grad is not None]
        with torch.no_grad():
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True
        if not finite:
            self.scaler.step(self.sgd)   # skipped: the scaler saw the overflow
            self.scaler.update()
            self._info("solver.py:0", f"fp16 gradients overflowed; loss scale now {self.scaler.get_scale():g}", "W")
        return finite

    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate: rate, ClipGradients, per-param update, net update."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        if self.param.display and self.iter % self.param.display == 0:
            self._info("sgd_solver.cpp:106", f"Iteration {self.iter}, lr = {_g(rate)}")
        clipped = self.sgd.clip_gradients()
        if clipped:
            self._info("sgd_solver.cpp:92", f"Gradient clipping: scaling down gradients (L2 norm {_g(clipped[0])} "
                       f"> {_g(float(self.sgd.clip))}) by scale factor {_g(clipped[1])}")
        self.sgd.set_rate(rate, self.iter)
        self.scaler.step(self.sgd)
        self.scaler.update()

    def step(self, iters: int) -> None:
        """Solver::Step: run ``iters`` iterations (fewer if stopped by a signal)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self._losses = []
        bar = _bar(self.progress, start_iter, p.max_iter)
        started = time.monotonic()
        try:
            with checks.deferred():   # device checks: read at display time, not every iteration
                self._steps(stop_iter, start_iter, started, bar)
        finally:
            bar.close()

    def _steps(self, stop_iter: int, start_iter: int, started: float, bar) -> None:
        """Solver::Step's loop."""
        p = self.param
        while self.iter < min(stop_iter, p.max_iter if self.time_budget else stop_iter):
            for q in self.params:
                q.param.grad = None  # ClearParamDiffs
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
            display = p.display and self.iter % p.display == 0
            loss = self.forward_backward()
            if not self._finish_gradients():
                self._redo = True
                continue
            self._update_smoothed(loss, start_iter)
            if display:
                checks.flush()
                self._display(bar)
            self.apply_update()
            self.iter += 1
            bar.update(1)
            if self.time_budget and (self.iter - start_iter) % BUDGET_CHECK_EVERY == 0:
                self._fit_budget(start_iter, time.monotonic() - started, bar)
            request = self._requested()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                checks.flush()
                self.snapshot()
            if request == "stop":
                self.stopped_early = True
                break

    def _fit_budget(self, start_iter: int, elapsed: float, bar) -> None:
        """Lower max_iter so that the remaining iterations fit ``time_budget`` at the pace so far
        (at most the solver's own max_iter; "poly" follows the new max_iter). Rank 0 decides."""
        p = self.param
        done = self.iter - start_iter
        if self._planned_max_iter is None:
            self._planned_max_iter = p.max_iter
        if done < 2 * BUDGET_CHECK_EVERY:  # the first iterations are slower (allocation, cudnn autotuning)
            return
        affordable = self.iter + int((self.time_budget - elapsed) * done / elapsed)
        affordable = max(self.iter, min(self._planned_max_iter, affordable))
        if self.world > 1:
            from .parallel import broadcast_int
            affordable = broadcast_int(affordable, self.device)
        if affordable != p.max_iter and (affordable < p.max_iter or affordable > 1.02 * p.max_iter):
            self._info("solver.py:0", f"Time budget {self.time_budget:.0f} s: {elapsed / done:.3g} s per iteration "
                       f"so far, max_iter {p.max_iter} -> {affordable}")
            p.max_iter = affordable
            bar.total = affordable

    def _display(self, bar) -> None:
        smoothed = self.smoothed()
        self._info("solver.cpp:228", f"Iteration {self.iter}, loss = {_g(smoothed)}")
        names = sorted(self.last_outputs)  # Caffe's output blobs come from a std::set: by name
        values = [self.last_outputs[n].float().reshape(-1).tolist() for n in names]
        for line in output_lines("Train", names, values, self.net.loss_weights):
            self._info("solver.cpp:244", line)
        bar.set_postfix(loss=f"{smoothed:.4g}")

    def _requested(self) -> str | None:
        """The action a signal asked for; agreed over processes so all ranks act alike, every
        REQUEST_CHECK_EVERY iterations (an all-reduce and a wait for the device each time)."""
        if self.world > 1:
            if self.iter % REQUEST_CHECK_EVERY:
                return None   # kept for the next agreement
            from .parallel import agree_request
            request, self._request = self._request, None
            return agree_request(request, self.device)
        request, self._request = self._request, None
        return request

    # -------------------------------------------------------------- solve
    def solve(self, resume: str | None = None) -> None:
        """Solver::Solve: restore, step to max_iter, snapshot, final display and test."""
        p = self.param
        self._info("solver.cpp:288", f"Solving {self.net.name}")
        self._info("solver.cpp:289", f"Learning Rate Policy: {p.lr_policy}")
        if resume:
            self._info("solver.cpp:295", f"Restoring previous solver status from {resume}")
            self.restore(resume)
        start_iter = self.iter
        with self._signals():
            self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.stopped_early:
            self._info("solver.cpp:310", "Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0 and self.rank == 0:
            with torch.no_grad(), self._autocast():
                self._reseed(0)
                loss = self.net.loss(self.net(self._inputs(self.train_feed, self.iter * p.iter_size))).float()
            self._update_smoothed(loss, start_iter)
            self._info("solver.cpp:326", f"Iteration {self.iter}, loss = {_g(self.smoothed())}")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self._info("solver.cpp:331", "Optimization Done.")

    @contextlib.contextmanager
    def _signals(self):
        """Caffe's SignalHandler: SIGINT does ``sigint_effect`` (default stop: snapshot and stop
        after the current iteration; a second one aborts), SIGHUP does ``sighup_effect``
        (default snapshot and go on); "none" ignores the signal. SIGTERM, as a scheduler or
        torchrun stops jobs, always stops."""
        import threading
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for effect in (self.sigint_effect, self.sighup_effect):
            if effect not in SIGNAL_EFFECTS:
                raise CaffeError(f"invalid signal effect {effect!r}; give one of {', '.join(SIGNAL_EFFECTS)}")

        def handler(effect):
            def on_signal(signum, frame):
                if effect == "stop":
                    self._request = "stop"
                    if signum in (signal.SIGINT, signal.SIGTERM):  # a second one aborts
                        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                                      else signal.SIG_DFL)
                elif effect == "snapshot":
                    self._request = self._request or "snapshot"
            return on_signal

        handlers = {signal.SIGINT: handler(self.sigint_effect), signal.SIGTERM: handler("stop")}
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = handler(self.sighup_effect)
        old = {s: signal.signal(s, h) for s, h in handlers.items()}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -------------------------------------------------------------- testing
    def test_all(self) -> None:
        """Solver::TestAll (rank 0 only, as Caffe's root solver)."""
        if self.rank != 0:
            return
        for i in range(len(self.test_nets)):
            self.test(i)

    @torch.no_grad()
    def test(self, i: int) -> None:
        """Solver::Test: mean of each output over test_iter batches, logged as Caffe does."""
        p, net, feed = self.param, self.test_nets[i], self.test_feeds[i]
        self._info("solver.cpp:330", f"Iteration {self.iter}, Testing net (#{i})")
        n_iter = int(p.test_iter[i])
        done_tests = self.iter // p.test_interval - (0 if p.test_initialization else 1) if p.test_interval else 0
        names, sums, loss = None, None, 0.0
        for j in range(n_iter):
            with self._autocast():
                blobs = net(self._inputs(feed, max(done_tests, 0) * n_iter + j))
            if p.test_compute_loss:
                loss = loss + net.loss(blobs).detach().double()
            if names is None:
                names = sorted(b for b in net.output_names if b in blobs)
            vals = [blobs[b].double().reshape(-1) for b in names]
            sums = vals if sums is None else [s + v for s, v in zip(sums, vals)]
        checks.flush()
        if p.test_compute_loss:
            self._info("solver.cpp:381", f"Test loss: {_g(float(loss) / n_iter)}")
        means = [(s / n_iter).tolist() for s in sums or []]
        for line in output_lines("Test", names or [], means, net.loss_weights):
            self._info("solver.cpp:397", line)

    # -------------------------------------------------------------- snapshots
    def snapshot_filename(self, ext: str) -> str:
        """Caffe's SnapshotFilename: ``<snapshot_prefix>_iter_<N><ext>``."""
        return f"{self.param.snapshot_prefix}_iter_{self.iter}{ext}"

    def snapshot(self) -> None:
        """Solver::Snapshot (rank 0 only, atomically): with ``snapshot_format: BINARYPROTO``
        (the default) ``.caffemodel`` + ``.solverstate``; with ``HDF5`` ``.caffemodel.h5`` (the
        net's HDF5 weights, diffs too with ``snapshot_diff``) + ``.solverstate.h5``."""
        if self.rank != 0:
            return
        history = [h.detach().float().cpu().numpy() for h in self.sgd.history]
        if self.param.snapshot_format == self.param.HDF5:
            from ..util.hdf5 import save_hdf5, save_solverstate_hdf5
            model = self.snapshot_filename(".caffemodel.h5")
            self._info("solver.cpp:479", f"Snapshotting to HDF5 file {model}")
            owned = {id(layer.blobs[i]) for layer, i in self.net._owned}
            diff = bool(self.param.snapshot_diff)
            save_hdf5(model, [(layer.name, [b.detach().float().cpu().numpy() if id(b) in owned else None
                                            for b in layer.blobs],
                               [_grad(b) for b in layer.blobs] if diff else None) for layer in self.net.layers])
            state_path = self.snapshot_filename(".solverstate.h5")
            self._info("sgd_solver.cpp:290", f"Snapshotting solver state to HDF5 file {state_path}")
            save_solverstate_hdf5(state_path, SolverState(self.iter, model, history, self.current_step))
            return
        model = self.snapshot_filename(".caffemodel")
        self._info("solver.cpp:454", f"Snapshotting to binary proto file {model}")
        self.net.save(model)
        state_path = self.snapshot_filename(".solverstate")
        self._info("sgd_solver.cpp:273", f"Snapshotting solver state to binary proto file {state_path}")
        save_solverstate(state_path, SolverState(self.iter, model, history, self.current_step))

    @torch.no_grad()
    def restore(self, path: str) -> None:
        """Resume from a ``.solverstate``: iteration, current_step, momentum history and
        the weights of its learned_net (relative to the working directory as in Caffe,
        else beside the solverstate). A path ending in ``.h5`` is an HDF5 solver state, as
        Solver::Restore decides."""
        if str(path).endswith(".h5"):
            from ..util.hdf5 import load_solverstate_hdf5
            state = load_solverstate_hdf5(path)
        else:
            state = load_solverstate(path)
        if state.learned_net:
            model = state.learned_net
            if not os.path.isabs(model) and not os.path.exists(model):
                beside = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.basename(model))
                model = beside if os.path.exists(beside) else model
            if not os.path.exists(model):
                raise CaffeError(f"{path}: its learned_net {state.learned_net} does not exist")
            report = self.net.copy_from(model)
            learnable = {lp.layer for lp in self.params}
            missing = sorted(learnable - set(report["copied"]))
            if missing:  # Caffe would resume them from fillers without a word
                self._info("solver.cpp:480", f"RESUMING WITH FILLER WEIGHTS: {model} holds no weights for "
                           f"layer(s) {', '.join(missing)} of the net; they restart from their fillers", "W")
        if len(state.history) != len(self.sgd.history):
            raise CaffeError(f"{path}: holds {len(state.history)} history blobs but a {self.sgd.type} solver over "
                             f"this net has {len(self.sgd.history)}")
        for i, (h, v) in enumerate(zip(state.history, self.sgd.history)):
            if h.size != v.numel():
                raise CaffeError(f"{path}: history blob {i} ({self.params[i].layer!r} blob {self.params[i].index}) "
                                   f"has shape {tuple(h.shape)} but the net's is {tuple(v.shape)}")
            v.copy_(torch.from_numpy(np.ascontiguousarray(h).reshape(tuple(v.shape))))
        self.iter, self.current_step = state.iter, state.current_step
        if self.world > 1:
            from .parallel import broadcast_params
            broadcast_params([p.param for p in self.params] + self.sgd.history)


def share_weights(train_net, test_net) -> None:
    """Caffe's ShareTrainedLayersWith: each train layer, in order, shares its blobs with the
    first test layer of its name (with a repeated name, a later train layer wins that one test
    layer, and later test layers of the name keep their own blobs)."""
    for src in train_net.layers:
        if src.name not in test_net.layer_names:
            continue
        layer = test_net.layers[test_net.layer_names.index(src.name)]
        if not len(layer.blobs) and not len(src.blobs):
            continue
        if len(src.blobs) != len(layer.blobs):
            raise CaffeError(f"layer {layer.name!r}: {len(layer.blobs)} blobs in the test net, "
                               f"{len(src.blobs)} in the train net")
        for i, b in enumerate(src.blobs):
            if tuple(b.shape) != tuple(layer.blobs[i].shape):
                raise CaffeError(f"layer {layer.name!r}: blob {i} has shape {tuple(layer.blobs[i].shape)} in the "
                                   f"test net but {tuple(b.shape)} in the train net")
            layer.blobs[i] = b


def _grad(param) -> np.ndarray:
    """A learnable blob's diff as float32 (zeros where none was computed)."""
    g = param.grad
    return np.zeros(tuple(param.shape), np.float32) if g is None else g.detach().float().cpu().numpy()


def _bar(enabled: bool, start: int, total: int):
    from tqdm import tqdm
    # disable=None: tqdm shows the bar only on a terminal
    return tqdm(total=total, initial=start, disable=True if not enabled else None, unit="iter",
                dynamic_ncols=True, desc="train", file=sys.stderr)


def snapshot_prefix(param, solver_path: str) -> str:
    """Caffe's UpgradeSnapshotPrefixProperty: unset -> the solver path without extension;
    a directory -> <dir>/<solver file stem>."""
    stem = os.path.splitext(solver_path)[0]
    if not param.snapshot_prefix:
        return stem
    if os.path.isdir(param.snapshot_prefix):
        return os.path.join(param.snapshot_prefix, os.path.basename(stem))
    return param.snapshot_prefix


def build_nets(param, mapping):
    """The train net and test nets a solver names (Caffe's InitTrainNet / InitTestNets)."""
    from ..net import Net
    sources = [(f, getattr(param, f)) for f in ("train_net_param", "train_net", "net_param", "net")
               if param.HasField(f)]
    if len(sources) != 1:
        raise CaffeError("the solver must name exactly one train net (one of train_net_param, train_net, "
                           f"net_param, net); it names {len(sources)}")
    field, source = sources[0]
    if isinstance(source, str) and not os.path.isfile(source):
        raise CaffeError(f"{field} {source}: no such file (relative to the working directory {os.getcwd()}, "
                           "as in Caffe)")
    st = param.train_state
    train = Net(source, "TRAIN", mapping, level=st.level, stages=list(st.stage))
    tests = list(param.test_net_param) + list(param.test_net)
    generic = param.HasField("net") or param.HasField("net_param")
    if generic:
        tests += [param.net_param if param.HasField("net_param") else param.net] * (len(param.test_iter) - len(tests))
    if len(param.test_iter) != len(tests):
        raise CaffeError(f"the solver gives {len(param.test_iter)} test_iter value(s) for {len(tests)} test net(s)")
    nets = []
    for i, src in enumerate(tests):
        if isinstance(src, str) and not os.path.isfile(src):
            raise CaffeError(f"test net {src}: no such file (relative to the working directory {os.getcwd()})")
        state = param.test_state[i] if i < len(param.test_state) else None
        nets.append(Net(src, "TEST", mapping, level=state.level if state else 0,
                        stages=list(state.stage) if state else ()))
    return train, nets
