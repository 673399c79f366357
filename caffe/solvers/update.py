"""Caffe's update rules and learning-rate policies, as BVLC Caffe's SGDSolver and its
subclasses (Nesterov, AdaGrad, RMSProp, AdaDelta, Adam: ``solvers/*_solver.cpp``).

``learning_rate`` is SGDSolver::GetLearningRate (fixed, step, exp, inv, multistep, poly,
sigmoid), in float32 where Caffe's Dtype arithmetic is. :class:`SGD` (a torch.optim.Optimizer)
is SGDSolver::ApplyUpdate after the rate: ClipGradients (global L2 norm over every learnable diff, before
normalisation), then per learnable param Normalize (diff /= iter_size), Regularize (diff +=
weight_decay x decay_mult x w, or x sign(w) for L1), ComputeUpdateValue (SGD: v = momentum v +
rate x lr_mult x diff; the other types are its subclasses below, one per Caffe solver, each
overriding ComputeUpdateValue) and w -= the update. The history blobs are
Caffe's, in its order (one per param; AdaDelta and Adam append a second set), so solverstates
move between Caffe and this engine. The loop around it is caffe.solvers.solver.Solver.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import CaffeError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
_f32 = np.float32


# ------------------------------------------------------------------ learning rate
def learning_rate(param, it: int, current_step: int = 0) -> tuple[float, int]:
    """Caffe's SGDSolver::GetLearningRate at iteration ``it`` -> (rate, new current_step).

    Float32 arithmetic where Caffe's is (Dtype = float); ``pow(float, int)`` promotes to
    double in C++, so those powers are taken in double, as Caffe's are.
    """
    policy = param.lr_policy
    base, gamma, power = _f32(param.base_lr), _f32(param.gamma), _f32(param.power)
    if policy == "fixed":
        rate = base
    elif policy == "step":
        _need(param.stepsize > 0, "lr_policy 'step' needs stepsize > 0")
        current_step = it // param.stepsize
        rate = float(base) * float(gamma) ** current_step
    elif policy == "exp":
        rate = float(base) * float(gamma) ** it
    elif policy == "inv":
        rate = base * np.power(_f32(1) + gamma * _f32(it), -power)
    elif policy == "multistep":
        # One step per call, as Caffe (called every iteration).
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
        rate = float(base) * float(gamma) ** current_step
    elif policy == "poly":
        _need(param.max_iter > 0, "lr_policy 'poly' needs max_iter > 0")
        rate = base * np.power(_f32(1) - _f32(it) / _f32(param.max_iter), power)
    elif policy == "sigmoid":
        _need(param.stepsize > 0, "lr_policy 'sigmoid' needs stepsize > 0")
        rate = base * (_f32(1) / (_f32(1) + np.exp(-gamma * (_f32(it) - _f32(param.stepsize)))))
    else:
        raise CaffeError(f"solver: unknown lr_policy {policy!r} (one of {', '.join(POLICIES)})")
    return float(_f32(rate)), current_step


def lr_at(param, it: int) -> float:
    """The learning rate at iteration ``it`` of a run started at 0 (multistep replayed)."""
    step = 0
    if param.lr_policy == "multistep":
        step = sum(1 for v in param.stepvalue[:] if it > v)  # steps taken before this call
    return learning_rate(param, it, step)[0]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise CaffeError(f"solver: {message}")


FINITE_FIELDS = ("base_lr", "momentum", "momentum2", "weight_decay", "gamma", "power", "delta", "rms_decay",
                 "clip_gradients")


def check_solver(param) -> None:
    """Caffe's solver parameter checks, as one-line errors. A real-valued field that is not a
    finite number (``base_lr: nan``, ``momentum: inf``) is refused naming the field, before
    it could only show up later as a diverging loss."""
    for name in FINITE_FIELDS:
        value = float(getattr(param, name))
        _need(np.isfinite(value), f"{name} is {value:g}; it must be a finite number")
    _need(param.type in TYPES or param.type == "", f"unknown solver type {param.type!r} (one of {', '.join(TYPES)})")
    if param.type in ("AdaGrad", "RMSProp"):  # Caffe's CHECKs in their constructors
        _need(param.momentum == 0, f"momentum cannot be used with {param.type}")
    if param.type == "RMSProp":
        _need(0 <= param.rms_decay <= 1, "rms_decay must be in [0, 1]")
    _need(param.lr_policy in POLICIES, f"unknown lr_policy {param.lr_policy!r} (one of {', '.join(POLICIES)})")
    _need(param.iter_size >= 1, "iter_size must be >= 1")
    _need(param.average_loss >= 1, "average_loss must be >= 1")
    _need(param.max_iter >= 0, "max_iter must be >= 0")
    _need(param.regularization_type in ("L1", "L2"),
          f"unknown regularization_type {param.regularization_type!r} (L1 or L2)")
    _need(param.gamma >= 0 or param.lr_policy in ("fixed", "poly"), "gamma must be >= 0")
    _need(list(param.stepvalue) == sorted(param.stepvalue), "stepvalue must be increasing")


# ------------------------------------------------------------------ the update rules
class SGD(torch.optim.Optimizer):
    """Caffe's SGDSolver update as a ``torch.optim.Optimizer``; the other solver types are its
    subclasses (:func:`solver_optimizer` picks one from a SolverParameter's ``type``).

    One param group per learnable param, carrying its ``lr_mult`` and ``decay_mult`` (and
    ``lr``: the solver's rate at this iteration, set by :meth:`update` or :meth:`set_rate`),
    so ``torch.amp.GradScaler`` (``unscale_``, ``step``) and gradient hooks work with it. The
    state of each param is Caffe's history blob(s); :attr:`history` lists them in Caffe's
    order (every param's first history, then the second set of AdaDelta and Adam).
    """

    history_sets = 1          # Caffe's AdaDelta and Adam append a second set

    def __init__(self, params, param):
        self.params = list(params)
        groups = [{"params": [p.param], "lr_mult": float(p.lr_mult), "decay_mult": float(p.decay_mult)}
                  for p in self.params]
        super().__init__(groups or [{"params": []}], {"lr": 0.0})
        self.type = type(self).__name__
        for p in self.params:
            self.state[p.param]["history"] = [torch.zeros_like(p.param, memory_format=torch.preserve_format)
                                              for _ in range(self.history_sets)]
        self.delta, self.rms_decay = _f32(param.delta), _f32(param.rms_decay)
        self.momentum2 = _f32(param.momentum2)
        self.momentum = _f32(param.momentum)
        self.weight_decay = _f32(param.weight_decay)
        self.l1 = param.regularization_type == "L1"
        self.clip = _f32(param.clip_gradients)
        self.iter_size = int(param.iter_size)
        self.iteration = 0

    @property
    def history(self) -> list[torch.Tensor]:
        """Caffe's history blobs, in its order (what a .solverstate holds)."""
        return [self.state[p.param]["history"][k] for k in range(self.history_sets) for p in self.params]

    @torch.no_grad()
    def clip_gradients(self) -> tuple[float, float] | None:
        """ClipGradients: scale every diff down if their global L2 norm exceeds the
        threshold. Returns (norm, scale) when it did."""
        if self.clip < 0:
            return None
        grads = [p.param.grad for p in self.params if p.param.grad is not None]
        if not grads:
            return None
        norm = float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads)))
        if norm > self.clip:
            scale = float(self.clip / _f32(norm))
            for g in grads:
                g.mul_(scale)
            return norm, scale
        return None

    def set_rate(self, rate: float, it: int = 0) -> None:
        """The solver's learning rate for the next :meth:`step` and the iteration (Adam's bias
        correction uses it)."""
        for group in self.param_groups:
            group["lr"] = rate
        self.iteration = it

    def update(self, rate: float, it: int = 0) -> None:
        """``set_rate`` then ``step``: one Caffe update at ``rate``."""
        self.set_rate(rate, it)
        self.step()

    @torch.no_grad()
    def step(self, closure=None):
        """Normalize, Regularize, ComputeUpdateValue for each param, then w -= the update; the
        update is left in each param's ``.grad`` (Caffe's diff after ApplyUpdate)."""
        loss = closure() if closure is not None else None
        norm = float(_f32(1) / _f32(self.iter_size))
        for group in self.param_groups:
            for w in group["params"]:
                g = w.grad if w.grad is not None else torch.zeros_like(w)  # no path to the loss: zero diff
                if self.iter_size > 1:
                    g.mul_(norm)
                decay = float(self.weight_decay * _f32(group["decay_mult"]))
                if decay:
                    g.add_(torch.sign(w) if self.l1 else w, alpha=decay)
                local = float(_f32(group["lr"]) * _f32(group["lr_mult"]))
                update = self.update_value(g, self.state[w]["history"], local, self.iteration)
                # As Caffe's ApplyUpdate, the diff holds the value applied (Net::Update: data -= diff).
                if w.grad is None:
                    w.grad = update.clone()
                else:
                    w.grad.copy_(update)
                w.sub_(w.grad)
        return loss

    def update_value(self, g, history: list, local: float, it: int):
        """ComputeUpdateValue: the value subtracted from the weights (``history`` is updated in
        place). SGD: v = momentum v + lr g."""
        return history[0].mul_(float(self.momentum)).add_(g, alpha=local)


class Nesterov(SGD):
    """NesterovSolver: v' = m v + lr g; update = (1 + m) v' - m v."""

    def update_value(self, g, history, local, it):
        h, m = history[0], float(self.momentum)
        previous = h.clone()
        h.mul_(m).add_(g, alpha=local)
        return h * (1 + m) - previous * m


class AdaGrad(SGD):
    """AdaGradSolver: h += g^2; update = lr g / (sqrt(h) + delta)."""

    def update_value(self, g, history, local, it):
        h = history[0].add_(g * g)
        return g / (h.sqrt() + float(self.delta)) * local


class RMSProp(SGD):
    """RMSPropSolver: h = d h + (1 - d) g^2; update = lr g / (sqrt(h) + delta)."""

    def update_value(self, g, history, local, it):
        d = float(self.rms_decay)
        h = history[0].mul_(d).add_(g * g, alpha=1 - d)
        return g / (h.sqrt() + float(self.delta)) * local


class AdaDelta(SGD):
    """AdaDeltaSolver: h = m h + (1-m) g^2; u = g sqrt((h2 + delta) / (h + delta));
    h2 = m h2 + (1-m) u^2; update = lr u."""

    history_sets = 2

    def update_value(self, g, history, local, it):
        (h, h2), m, delta = history, float(self.momentum), float(self.delta)
        h.mul_(m).add_(g * g, alpha=1 - m)
        u = g * ((h2 + delta) / (h + delta)).sqrt()
        h2.mul_(m).add_(u * u, alpha=1 - m)
        return u * local


class Adam(SGD):
    """AdamSolver: m1 = b1 m1 + (1-b1) g; v = b2 v + (1-b2) g^2;
    update = lr c m1 / (sqrt(v) + eps), c = sqrt(1 - b2^t) / (1 - b1^t), t = it + 1."""

    history_sets = 2

    def update_value(self, g, history, local, it):
        (h, h2), b1, b2, t = history, float(self.momentum), float(self.momentum2), it + 1
        h.mul_(b1).add_(g, alpha=1 - b1)
        h2.mul_(b2).add_(g * g, alpha=1 - b2)
        correction = _f32(np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))   # pow(float, int) is double in C++
        return h / (h2.sqrt() + float(self.delta)) * float(_f32(local) * correction)


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def solver_optimizer(params, param) -> SGD:
    """The optimizer of ``param.type`` (after check_solver, which knows the names)."""
    return OPTIMIZERS[param.type or "SGD"](params, param)
