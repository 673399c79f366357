"""Score a net for N batches from its data layers: what ``caffe test`` does (tools/caffe.cpp).

Each batch is read by the net's ImageSegData layers (caffe.data.image_seg), forwarded without
gradients, and every element of every output blob is logged (``Batch i, accuracy = ...``);
then the mean loss and each output's mean over the batches, loss outputs with their weight
(``loss = 0.5 (* 1 = 0.5 loss)``). Layers with side effects run as in any forward pass, so
MatWrite writes its files. The net's outputs are the blobs no layer reads, in name order
(Caffe keeps them in a std::set).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import CaffeError


@dataclass
class Scores:
    """The mean loss and each output's per-element means over the scored batches."""

    loss: float = 0.0
    means: dict[str, list[float]] = field(default_factory=dict)


def select_device(gpus: str | None, log=None) -> str:
    """The device ``caffe test`` / ``caffe time`` use: the first id of ``--gpu``, else the CPU."""
    import torch
    from ..common import gpu_ids, use_cuda_device
    ids = gpu_ids(gpus)
    if not ids:
        if log:
            log("caffe.cpp:275", "Use CPU.")
        return "cpu"
    use_cuda_device(ids[0])
    if log:
        log("caffe.cpp:266", f"Use GPU with device ID {ids[0]}")
        log("caffe.cpp:270", f"GPU device name: {torch.cuda.get_device_name(ids[0])}")
    return f"cuda:{ids[0]}"


def score(model: str, weights: list[str], iterations: int = 50, *, phase: str = "TEST", level: int = 0,
          stages=(), gpus: str | None = None, mapping: dict[str, str] | None = None, workers: int = 0,
          log=None) -> Scores:
    """Forward ``model`` (with ``weights`` copied in by layer name) over ``iterations`` batches
    of its data layers and log what ``caffe test`` logs through ``log(where, message)``."""
    import torch
    from ..data.stream import NetFeed
    from ..net import Net
    from ..solvers.solver import _g

    if not weights:
        raise CaffeError("need model weights to score (--weights=X.caffemodel)")
    if iterations < 1:
        raise CaffeError(f"iterations must be at least 1, got {iterations}")
    device = select_device(gpus, log)
    net = Net(model, phase, mapping, level=level, stages=[s for s in stages if s])
    for w in weights:
        net.copy_from(w)
    net.to(device)
    if log:
        log("caffe.cpp:281", f"Running for {iterations} iterations.")
    feed = NetFeed(net, 0, 0, 1, workers, device.startswith("cuda"))
    names, sums, loss = None, None, 0.0
    try:
        with torch.no_grad():
            for i in range(iterations):
                blobs = net({k: v.to(device, non_blocking=True) for k, v in feed(i).items()})
                if net.loss_weights:
                    loss += float(net.loss(blobs))
                if names is None:
                    names = sorted(b for b in net.output_names if b in blobs)
                values = [blobs[b].double().reshape(-1).cpu() for b in names]
                sums = values if sums is None else [s + v for s, v in zip(sums, values)]
                if log:
                    for name, vals in zip(names, values):
                        for v in vals.tolist():
                            log("caffe.cpp:304", f"Batch {i}, {name} = {_g(v)}")
                del blobs
    finally:
        feed.close()
    result = Scores(loss / iterations, {n: (s / iterations).tolist() for n, s in zip(names, sums)})
    if log:
        log("caffe.cpp:309", f"Loss: {_g(result.loss)}")
        for name, means in result.means.items():
            w = net.loss_weights.get(name, 0.0)
            for m in means:
                log("caffe.cpp:321", f"{name} = {_g(m)}" + (f" (* {_g(w)} = {_g(w * m)} loss)" if w else ""))
    return result
