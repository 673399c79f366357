"""``deeplab-extract --backend onnxruntime``: the score net exported to ONNX, run by onnxruntime.

On this project's 2-core CPU the exported nets ran 1.5-2.2x faster under onnxruntime than
under the engine (bench/bench_export.py; bench/bench_peers.py has both columns). The net
extraction runs (ScoreNet's cut-down test net, its weights loaded and checked) is made a
deploy net (caffe.export.deploy: an Input in front), its outputs are the blobs extraction
reads, and caffe.export writes it as ONNX with dynamic batch and size where the layers allow.
The file is kept in a cache folder (default: ``<temp>/deeplab-onnx``) under a digest of the
net's text, its outputs and every weight, so a run exports once and a rerun with the same
net and weights exports nothing. A net exported at a fixed size gets one file per canvas size.
onnxruntime (the ``dev`` extra, or ``pip install onnxruntime``) runs float32 on the CPU.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np

from .. import DeepLabError

CACHE = os.path.join(tempfile.gettempdir(), "deeplab-onnx")


def net_digest(scorenet, outputs: list[str]) -> str:
    """A digest of what decides the exported file: the net's text, the outputs, every weight,
    the torch version (the exporter)."""
    import torch
    h = hashlib.sha256()
    h.update(scorenet.identity().encode())
    h.update(repr((outputs, scorenet.input_name, torch.__version__)).encode())
    for layer in scorenet.net.layers:
        for blob in layer.blobs:
            h.update(layer.name.encode())
            h.update(np.ascontiguousarray(blob.detach().float().cpu().numpy()).tobytes())
    return h.hexdigest()[:24]


class OnnxRunner:
    """Runs ``scorenet``'s net on onnxruntime's CPU provider; ``run(x)`` gives ``outputs``."""

    def __init__(self, scorenet, outputs: list[str], cache: str | None = None, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise DeepLabError("--backend onnxruntime needs onnxruntime (pip install onnxruntime)") from None
        self.ort = onnxruntime
        self.scorenet = scorenet
        self.outputs = list(outputs)
        self.cache = cache or CACHE
        self.key = net_digest(scorenet, self.outputs)
        self.threads = threads
        self.sessions: dict[tuple | None, object] = {}
        self.exported: list[str] = []      # files written by this run (the rest came from the cache)
        self._session(None)

    def _path(self, hw) -> str:
        return os.path.join(self.cache, f"{self.key}{'' if hw is None else f'-{hw[0]}x{hw[1]}'}.onnx")

    def _export(self, path: str, hw) -> None:
        """Export the deploy form of the net (probe size, or ``hw`` for a fixed-size file)."""
        import torch
        from caffe import export as ex
        from caffe.net import Net
        net = self.scorenet
        size = hw or (net.probe, net.probe)
        deploy = ex.deploy(net.param, {net.input_name: (1, 3) + tuple(size)})
        dnet = Net(deploy.param, "TEST")
        dnet.copy_from(net.net.layer_blobs())
        dnet.output_names = list(self.outputs)      # the blobs extraction reads, in this order
        dnet.eval()
        os.makedirs(self.cache, exist_ok=True)
        with torch.no_grad():
            ex.export_onnx(dnet, path, dynamic=hw is None)     # written atomically
        self.exported.append(path)

    def _session(self, hw):
        path = self._path(hw)
        if not os.path.isfile(path):
            self._export(path, hw)
        opts = self.ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = int(self.threads)
        session = self.ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.sessions[hw] = session
        return session

    def run(self, x_nchw: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for an N x 3 x H x W float32 batch."""
        session = self.sessions[None]
        dims = session.get_inputs()[0].shape[2:]
        hw = tuple(x_nchw.shape[2:])
        if all(isinstance(d, int) for d in dims) and tuple(dims) != hw:
            # exported at a fixed size (a layer ties it): one file per canvas size
            session = self.sessions.get(hw) or self._session(hw)
        values = session.run(self.outputs, {session.get_inputs()[0].name: np.ascontiguousarray(x_nchw, np.float32)})
        return dict(zip(self.outputs, values))
