"""Make the BVLC Caffe golden fixtures of tests/fixtures/golden/bvlc with BVLC Caffe itself.

    /usr/bin/python3 tools/make_bvlc_golden.py --caffe-root DIR [--out tests/fixtures/golden/bvlc] [--only NAME ...]

DIR is a CPU_ONLY build of BVLC/caffe (``make all pycaffe``), made outside this repository; its
``python/`` is imported as ``caffe`` and its ``build/tools/convert_imageset`` writes the Data
layer's databases. The cases, their inputs and the code that runs them are tests/caffe/golden_cases.py,
which tests/caffe/test_bvlc_golden.py replays on this project's ``caffe``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "caffe"))
import golden_cases  # noqa: E402


def make_data(caffe_pb2, folder: str, tools: str) -> None:
    """The files the data-layer cases read: PNG images, lists, LMDB/LevelDB, HDF5, a window file."""
    from PIL import Image
    import h5py
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "img"))
    rng = np.random.default_rng(7)
    names = [f"im{k}.png" for k in range(6)]
    with open(os.path.join(folder, "images.txt"), "w") as f:
        for k, name in enumerate(names):
            Image.fromarray(rng.integers(0, 256, (7, 8, 3), dtype=np.uint8)).save(os.path.join(folder, "img", name))
            f.write(f"{name} {k % 3}\n")
    convert = os.path.join(tools, "convert_imageset")
    for db, extra in (("lmdb", ["--backend=lmdb"]), ("lmdb_encoded", ["--backend=lmdb", "--encoded", "--encode_type=png"]),
                      ("leveldb", ["--backend=leveldb", "--encoded", "--encode_type=png"])):
        subprocess.run([convert, *extra, "img/", "images.txt", db], cwd=folder, check=True)
    mean = caffe_pb2.BlobProto()
    mean.shape.dim.extend([1, 1, 7, 8])
    mean.data.extend(rng.uniform(50, 150, 56).astype(np.float32).tolist())
    with open(os.path.join(folder, "mean_gray.binaryproto"), "wb") as f:
        f.write(mean.SerializeToString())
    for name, rows in (("d1.h5", 5), ("d2.h5", 4)):
        with h5py.File(os.path.join(folder, name), "w") as f:
            f["t0"] = rng.normal(0, 1, (rows, 2, 3, 3)).astype(np.float32)   # HDF5Data reads datasets named as its tops
            f["t1"] = rng.integers(0, 4, (rows, 1)).astype(np.float32)
    with open(os.path.join(folder, "h5list.txt"), "w") as f:
        f.write("d1.h5\nd2.h5\n")
    with open(os.path.join(folder, "windows.txt"), "w") as f:
        f.write("# 0\nimg/im0.png\n3\n7\n8\n2\n1 0.9 1 1 6 5\n2 0.1 0 2 7 6\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caffe-root", required=True)
    ap.add_argument("--out", default="tests/fixtures/golden/bvlc")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(args.caffe_root, "python"))
    import caffe
    from caffe.proto import caffe_pb2
    caffe.set_mode_cpu()
    caffe.set_random_seed(1)   # the fillers draw the same values on every run (each case forks from here)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "layers"), exist_ok=True)
    if args.only is None:
        make_data(caffe_pb2, os.path.join(out, golden_cases.DATA_DIR), os.path.join(args.caffe_root, "build", "tools"))
    failed, refused = [], []
    for case in golden_cases.LAYER_CASES:
        if not args.only or case.name in args.only:
            target = os.path.join(out, "layers", case.name + ".npz")
            ok = in_child(lambda: np.savez_compressed(target, **golden_cases.run_layer_case(caffe, case, out)))
            if ok == bool(case.refused):
                failed.append(case.name)
            elif case.refused:
                refused.append(case.name)
    if not args.only:
        with open(os.path.join(out, "refused.txt"), "w") as f:
            f.write("".join(name + "\n" for name in refused))
    for name in golden_cases.SOLVER_CASES:
        if not args.only or name in args.only:
            folder = os.path.join(out, "solvers", name)
            os.makedirs(folder, exist_ok=True)
            target = os.path.join(folder, "trajectory.npz")
            if not in_child(lambda: np.savez_compressed(target, **golden_cases.run_solver_case(caffe, name, folder))):
                failed.append(name)
    print("refused as expected:", " ".join(refused) or "none")
    print("UNEXPECTED (failed, or a case marked refused ran):", " ".join(failed) or "none")


def in_child(job) -> bool:
    """Run ``job`` in a forked process (a failed CHECK aborts Caffe's whole process); success?"""
    pid = os.fork()
    if pid == 0:
        try:
            job()
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - reported by the parent through the exit status
            print(e, file=sys.stderr)
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


if __name__ == "__main__":
    main()
