"""Make the DeepLab fork golden fixtures of tests/fixtures/golden/fork with the fork itself.

    /usr/bin/python3 tools/make_fork_golden.py --fork-python DIR [--out tests/fixtures/golden/fork] [--only NAME ...]

DIR holds the ``_caffe`` extension module of a CPU_ONLY build of the fork (corenel/deeplab-public,
DeepLab v1's Caffe, ``python/caffe/_caffe.cpp``) for the Python running this script, made
outside this repository. Only that extension is imported: the fork's ``pycaffe.py`` is Python 2.
The cases, their inputs and the code that runs them are tests/caffe/fork_golden_cases.py, which
tests/caffe/test_fork_golden.py replays on this project's ``caffe``.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "caffe"))
import fork_golden_cases  # noqa: E402


def load_extension(folder: str):
    """The fork's ``_caffe`` extension module found in ``folder``."""
    found = sorted(glob.glob(os.path.join(folder, "_caffe*.so")))
    if not found:
        sys.exit(f"make_fork_golden: no _caffe*.so in {folder}")
    spec = importlib.util.spec_from_file_location("_caffe", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ForkDriver(fork_golden_cases.NetDriver):
    """fork_golden_cases.NetDriver over the fork's raw ``_caffe.Net`` (its 2014 API)."""

    def __init__(self, extension):
        self.ext = extension

    def open(self, path):
        self.net = self.ext.Net(path)
        self.net.set_mode_cpu()
        self.net.set_phase_test()
        self.blobs = dict(zip(self.net._blob_names, self.net._blobs))
        self.layers = dict(zip(self.net._layer_names, self.net.layers))

    def data(self, blob):
        return self.blobs[blob].data

    def diff(self, blob):
        return self.blobs[blob].diff

    def param_data(self, layer, i):
        return self.layers[layer].blobs[i].data

    def param_diff(self, layer, i):
        return self.layers[layer].blobs[i].diff

    def num_params(self, layer):
        return len(self.layers[layer].blobs)

    def forward(self):
        self.net._forward(0, len(self.layers) - 1)

    def backward(self):
        self.net._backward(len(self.layers) - 1, 0)


def in_child(job) -> bool:
    """Run ``job`` in a forked child (a failed CHECK aborts the process); whether it succeeded."""
    pid = os.fork()
    if pid == 0:
        try:
            job()
        except BaseException as e:   # noqa: BLE001 - reported, then the child exits non-zero
            print(f"make_fork_golden: {e}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fork-python", required=True)
    ap.add_argument("--out", default="tests/fixtures/golden/fork")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    extension = load_extension(args.fork_python)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "layers"), exist_ok=True)
    fork_golden_cases.write_files(os.path.join(out, fork_golden_cases.DATA_DIR))
    failed = []
    for case in fork_golden_cases.FORK_CASES:
        if args.only and case.name not in args.only:
            continue
        target = os.path.join(out, "layers", case.name + ".npz")
        if not in_child(lambda: np.savez_compressed(target, **fork_golden_cases.run_fork_case(ForkDriver(extension),
                                                                                             case, out))):
            failed.append(case.name)
    if failed:
        sys.exit(f"make_fork_golden: the fork failed on {', '.join(failed)}")


if __name__ == "__main__":
    main()
