"""Benchmark caffe.model_io on a VGG-16-sized caffemodel (~553 MB) against the naive way.

Writes random weights with the 16 VGG-16 layer shapes (fc6 is 4096 x 25088) to a temporary
folder, then times ``load_caffemodel`` / ``save_caffemodel`` and, as the reference measured
in the same run, ``caffe_pb2.NetParameter.FromString`` + ``np.array(blob.data)`` for loading
and ``blob.data.extend(array)`` + ``SerializeToString`` for saving.

    .venv/bin/python bench/bench_io.py [--scale 0.25] [--repeat 3] [--no-naive-save]

Times are the best of --repeat runs (the naive writer runs once: it takes ~20 s).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from caffe.model_io import LayerBlobs, load_caffemodel, save_caffemodel
from caffe.proto import caffe_pb2 as pb

VGG16 = [("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 128, 64, 3),
         ("conv2_2", 128, 128, 3), ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3),
         ("conv3_3", 256, 256, 3), ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3),
         ("conv4_3", 512, 512, 3), ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3),
         ("conv5_3", 512, 512, 3)]
FC = [("fc6", 4096, 25088), ("fc7", 4096, 4096), ("fc8", 1000, 4096)]


def vgg16_layers(scale: float, seed: int = 0) -> list[LayerBlobs]:
    """Random VGG-16 weights; ``scale`` < 1 shrinks the fc layers' output count."""
    rng = np.random.default_rng(seed)
    layers = []
    for name, out, inp, k in VGG16:
        layers.append(LayerBlobs(name, "Convolution",
                                 [rng.standard_normal((out, inp, k, k), np.float32),
                                  rng.standard_normal(out, np.float32)]))
    for name, out, inp in FC:
        out = max(1, int(out * scale))
        layers.append(LayerBlobs(name, "InnerProduct",
                                 [rng.standard_normal((out, inp), np.float32),
                                  rng.standard_normal(out, np.float32)]))
    return layers


def naive_load(path: str) -> list[np.ndarray]:
    """The reference: generated classes and a Python list of floats per blob."""
    with open(path, "rb") as f:
        net = pb.NetParameter.FromString(f.read())
    return [np.array(b.data, np.float32).reshape(tuple(b.shape.dim))
            for layer in net.layer for b in layer.blobs]


def naive_save(path: str, layers: list[LayerBlobs]) -> None:
    """The reference writer: fill generated messages and serialize."""
    net = pb.NetParameter()
    for layer in layers:
        lp = net.layer.add(name=layer.name, type=layer.type)
        for arr in layer.blobs:
            blob = lp.blobs.add()
            blob.shape.dim.extend(arr.shape)
            blob.data.extend(arr.ravel().tolist())
    with open(path, "wb") as f:
        f.write(net.SerializeToString())


def timed(repeat: int, fn, *args):
    """Best wall time of ``repeat`` calls (this machine is shared: take the least disturbed)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        out = None  # free the previous result first
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="shrink the fc layers (1.0 = full VGG-16 size)")
    ap.add_argument("--repeat", type=int, default=3, help="take the best of this many runs")
    ap.add_argument("--no-naive-save", action="store_true", help="skip the slow reference writer")
    args = ap.parse_args(argv)

    layers = vgg16_layers(args.scale)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg16.caffemodel")
        t_save, _ = timed(args.repeat, save_caffemodel, path, layers)
        size_mb = os.path.getsize(path) / 2**20
        t_load, loaded = timed(args.repeat, load_caffemodel, path)
        t_naive_load, ref = timed(args.repeat, naive_load, path)
        assert all(np.array_equal(a, b) for a, b in zip((b for l in loaded for b in l.blobs), ref))
        print(f"file: {size_mb:.0f} MB, {sum(b.size for l in layers for b in l.blobs) / 1e6:.1f} M params")
        print(f"load_caffemodel   {t_load:7.2f} s   naive FromString+np.array {t_naive_load:7.2f} s"
              f"   speed-up {t_naive_load / t_load:6.1f}x")
        if args.no_naive_save:
            print(f"save_caffemodel   {t_save:7.2f} s")
        else:
            t_naive_save, _ = timed(1, naive_save, os.path.join(tmp, "naive.caffemodel"), layers)
            print(f"save_caffemodel   {t_save:7.2f} s   naive fill+Serialize      {t_naive_save:7.2f} s"
                  f"   speed-up {t_naive_save / t_save:6.1f}x")


if __name__ == "__main__":
    main()
