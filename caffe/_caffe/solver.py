"""pycaffe's solvers: ``caffe.SGDSolver(path)`` and ``caffe.get_solver(path)``.

The loop, update rule, learning-rate policies, snapshots and log lines are the engine's
(caffe.solvers.solver.Solver, caffe.solvers.update); what differs is that the nets are pycaffe Nets
(``solver.net``, ``solver.test_nets``), run layer by layer over their blob memory: data
comes from the net's own layers (Input blobs the user fills, Python, DummyData, MemoryData,
ImageSegData), so a script that writes ``solver.net.blobs['data'].data`` or a Python data
layer drives training, exactly as with Caffe's pycaffe.
"""
from __future__ import annotations

import os

import torch

from .. import CaffeError
from ..pycaffe import Net, device
from ..syncedmem import device_wrote, push
from ..solvers.update import check_solver
from ..solvers.solver import CaffeLog, Solver, build_nets, output_lines, snapshot_prefix


class _Loop(Solver):
    """The engine's Solver with pycaffe Nets doing forward/backward and testing."""

    def __init__(self, param, train: Net, tests: list[Net], callbacks: list, **kw):
        self.py_net, self.py_tests, self.callbacks = train, tests, callbacks
        super().__init__(param, train._net, self._feed, [t._net for t in tests], [None] * len(tests), **kw)

    def _feed(self, b: int) -> dict:
        """The train net's data-layer tops as they are now (the final display's forward)."""
        return {name: torch.from_numpy(self.py_net.blobs[name].values().copy()) for name in self.net.input_names}

    def forward_backward(self) -> torch.Tensor:
        """Net::ForwardBackward iter_size times on the pycaffe train net; the mean loss, left on
        the device. The learnable blobs stay there: a callback's writes through ``.data`` /
        ``.diff`` are copied to the device after it, and only those (caffe.syncedmem)."""
        params = [p.param for p in self.params]
        device_wrote(params)   # the last update and ClearParamDiffs ran on the device
        for on_start, _ in self.callbacks:
            on_start()
        push(params)
        net, n, total = self.py_net, self.param.iter_size, 0.0
        for k in range(n):
            self._reseed(k)
            total = total + net._graph.forward(net, 0, len(net.layers) - 1)
            net._graph.backward(net, len(net.layers) - 1, 0)
        device_wrote(params)
        dev = net._graph.device
        self.last_outputs = {b: net.blobs[b].device_data(dev).detach().clone() for b in net.outputs}
        for _, on_gradients_ready in self.callbacks:
            on_gradients_ready()
            push(params)
        return (total / n).float()

    @torch.no_grad()
    def test(self, i: int) -> None:
        """Solver::Test on pycaffe test net i: the mean of each output over test_iter batches."""
        p, net = self.param, self.py_tests[i]
        self._info("solver.cpp:330", f"Iteration {self.iter}, Testing net (#{i})")
        n_iter, sums, loss = int(p.test_iter[i]), None, 0.0
        for _ in range(n_iter):
            loss = loss + net._graph.forward(net, 0, len(net.layers) - 1)
            vals = [net.blobs[b].values().astype("float64").reshape(-1) for b in net.outputs]
            sums = vals if sums is None else [s + v for s, v in zip(sums, vals)]
        if p.test_compute_loss:
            self._info("solver.cpp:381", f"Test loss: {float(loss) / n_iter:.6g}")
        means = [(s / n_iter).tolist() for s in sums or []]
        for line in output_lines("Test", net.outputs, means, net._net.loss_weights):
            self._info("solver.cpp:397", line)


class SGDSolver:
    """Caffe's SGD solver from a solver prototxt: ``.net``, ``.test_nets``, ``.iter``,
    ``.step(n)``, ``.solve(resume=None)``, ``.restore(path)``, ``.snapshot()``,
    ``.apply_update()``, ``.add_callback(on_start, on_gradients_ready)``."""

    solver_type = "SGD"

    def __init__(self, filename: str):
        from ..prototxt import parse_solver
        if not os.path.isfile(filename):
            raise CaffeError(f"Could not open file {filename}")
        param = parse_solver(filename)
        param.type = self.solver_type   # as in BVLC's pycaffe, the class decides the update rule
        check_solver(param)
        param.snapshot_prefix = snapshot_prefix(param, filename)
        seed = int(param.random_seed)
        if seed >= 0:
            torch.manual_seed(seed)
        train, tests = build_nets(param, None)
        for w in param.weights:
            train.copy_from(w)
        self.net = Net.from_engine(train)
        self.test_nets = [Net.from_engine(t) for t in tests]
        self._callbacks: list = []
        self._loop = _Loop(param, self.net, self.test_nets, self._callbacks, seed=max(seed, 0),
                           device=device(), log=CaffeLog(None, stderr=True), progress=False)
        from .parallel import solver_rank
        if solver_rank() != 0:   # as Caffe's non-root solvers: no testing, snapshots or log lines
            self._loop.rank, self._loop.log = solver_rank(), None

    @property
    def type(self) -> str:
        """The solver type name ("SGD", "Nesterov", ...), Solver::type."""
        return self.solver_type

    @property
    def param(self):
        """The SolverParameter."""
        return self._loop.param

    @property
    def iter(self) -> int:
        """The current iteration."""
        return self._loop.iter

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration."""
        from ..solvers.update import learning_rate
        return learning_rate(self.param, self.iter, self._loop.current_step)[0]

    def _run(self, fn, *args):
        params = [p.param for p in self._loop.params]
        for net in [self.net, *self.test_nets]:
            net._sync_in()
        try:
            return fn(*args)
        finally:
            device_wrote(params)

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Solver::Step)."""
        self._run(self._loop.step, int(iters))

    def solve(self, resume: str | None = None) -> None:
        """Train to max_iter, resuming from a .solverstate if given (Solver::Solve)."""
        self._run(self._loop.solve, resume)

    def restore(self, filename: str) -> None:
        """Load a .solverstate (iteration, momentum history, its weights)."""
        self._run(self._loop.restore, filename)

    def snapshot(self) -> None:
        """Write <prefix>_iter_N.caffemodel and .solverstate."""
        self._run(self._loop.snapshot)

    def apply_update(self) -> None:
        """One update from the current diffs (SGDSolver::ApplyUpdate); does not advance iter."""
        self._run(self._loop.apply_update)

    def add_callback(self, on_start, on_gradients_ready=None) -> None:
        """Call ``on_start()`` at the start of each iteration and ``on_gradients_ready()``
        after its backward, before the update; or ``add_callback(nccl)`` with a caffe.NCCL."""
        if on_gradients_ready is None:
            if not hasattr(on_start, "on_gradients_ready"):
                raise TypeError("add_callback(on_start, on_gradients_ready) or add_callback(caffe.NCCL)")
            on_start, on_gradients_ready = on_start.on_start, on_start.on_gradients_ready
        self._callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net: Net) -> None:
        """Make ``net`` use this solver's train net weights (by layer name)."""
        net.share_with(self.net)


class NesterovSolver(SGDSolver):
    """Caffe's Nesterov solver (``type: "Nesterov"``)."""
    solver_type = "Nesterov"


class AdaGradSolver(SGDSolver):
    """Caffe's AdaGrad solver (``type: "AdaGrad"``)."""
    solver_type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    """Caffe's RMSProp solver (``type: "RMSProp"``)."""
    solver_type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    """Caffe's AdaDelta solver (``type: "AdaDelta"``)."""
    solver_type = "AdaDelta"


class AdamSolver(SGDSolver):
    """Caffe's Adam solver (``type: "Adam"``)."""
    solver_type = "Adam"


SOLVERS = {cls.solver_type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                            AdaDeltaSolver, AdamSolver)}


def get_solver(filename: str):
    """The solver class the file's ``type`` names, built from the file."""
    from ..prototxt import parse_solver
    if not os.path.isfile(filename):
        raise CaffeError(f"Could not open file {filename}")
    kind = parse_solver(filename).type or "SGD"
    if kind not in SOLVERS:
        raise CaffeError(f"{filename}: solver type {kind!r} is not available here (available: {', '.join(SOLVERS)})")
    return SOLVERS[kind](filename)
