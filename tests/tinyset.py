"""A tiny experiment for the pipeline's fault tests (provenance, bad inputs, kill and resume):
images, labels, a list, a 3-class description, the tiny test net's weights and score maps.

Everything is small (a few 40 x 56 images, a net of a few hundred weights) so that a whole
stage runs in well under a second once Python has started.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np

from conftest import FIXTURES, REPO

PROTOTXT = str(FIXTURES / "extract" / "tiny_test.prototxt")
MAPPING = {"NET_ID": "tiny", "DATA_ROOT": "", "LIST": "", "EXP": "voc12", "FEATURE_DIR": "unused", "LIST_ID": ""}
SETS = [f"--set={k}={v}" for k, v in MAPPING.items()]
CLASSES = "0 a 0 0 0\n1 b 128 0 0\n2 c 0 128 0\n255 void 255 255 255\n"


def make(root: pathlib.Path, n: int = 4, h: int = 40, w: int = 56, seed: int = 0) -> list[str]:
    """images/<id>.png (lossless), labels/<id>.png (0..2 and a void band), list.txt,
    classes.txt, scores/<id>.npy + .json (stride 8, 3 classes); returns the ids."""
    from deeplab.labels import write_label
    from deeplab.extract.scoremaps import save_scores

    rng = np.random.default_rng(seed)
    for sub in ("images", "labels", "scores"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(n):
        ident = f"im{k}"
        label = np.zeros((h, w), np.uint8)
        x = 18 + 3 * (k % 8)
        label[:, x:] = 1
        label[22:, 36:] = 2
        rgb = (np.array([(30, 30, 30), (200, 60, 50), (60, 160, 220)])[label]
               + rng.integers(-10, 11, (h, w, 3))).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{ident}.png"), rgb[:, :, ::-1])
        gt = label.copy()
        gt[:, x - 1] = 255
        write_label(root / "labels" / f"{ident}.png", gt)
        sh, sw = (h - 1) // 8 + 2, (w - 1) // 8 + 2
        small = cv2.resize(np.roll(label, 5, axis=1), (sw, sh), interpolation=cv2.INTER_AREA)
        raw = np.stack([(small == c) * 3.0 for c in range(3)]).astype(np.float32)
        raw += rng.normal(0, 0.7, raw.shape).astype(np.float32)
        save_scores(root / "scores" / f"{ident}.npy", raw, h, w)
        ids.append(ident)
    (root / "list.txt").write_text("".join(f"/images/{i}.png /labels/{i}.png\n" for i in ids))
    (root / "classes.txt").write_text(CLASSES)
    return ids


def weights(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Random weights of the tiny test net (seeded), saved as a caffemodel."""
    import torch

    from caffe.net import Net

    torch.manual_seed(seed)
    Net(PROTOTXT, "TEST", mapping=MAPPING).save(path)
    return path


def extract_argv(root: pathlib.Path, w: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    """deeplab-extract's arguments over the tiny set."""
    return ["--model", PROTOTXT, "--weights", str(w), "--list", str(root / "list.txt"), "--root", str(root),
            "--out", str(out), "--quiet", "--workers", "1", *SETS, *extra]


def crf_argv(root: pathlib.Path, out: pathlib.Path, *extra: str, scores: pathlib.Path | None = None) -> list[str]:
    """densecrf's arguments over the tiny set."""
    return ["--images", str(root / "images"), "--scores", str(scores or root / "scores"), "--list",
            str(root / "list.txt"), "--out", str(out), "-j", "1", "--quiet", "--iters", "3", *extra]


def search_argv(root: pathlib.Path, out: pathlib.Path, *extra: str, scores: pathlib.Path | None = None) -> list[str]:
    """deeplab-crf-search's arguments over the tiny set (a 2 x 2 x 1 grid, no fine stage)."""
    return ["--images", str(root / "images"), "--scores", str(scores or root / "scores"), "--labels",
            str(root / "labels"), "--list", str(root / "list.txt"), "--out", str(out), "--classes",
            str(root / "classes.txt"), "--bi-w", "3,5", "--bi-xy-std", "20,40", "--bi-rgb-std", "5",
            "--fine-div", "0", "--iters", "3", "-j", "1", "--quiet", *extra]


def outputs(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file of a folder (hidden ones included) with its bytes."""
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))
            if (folder / name).is_file()}


TOOLS = {"extract": ["tools/extract.py"], "densecrf": ["-m", "densecrf"], "crf_search": ["tools/crf_search.py"]}


def command(tool: str, argv: list[str]) -> list[str]:
    """The command line running ``tool`` (a key of TOOLS) from the repository root."""
    return [sys.executable, *TOOLS[tool], *argv]


def env() -> dict:
    """The environment for tool subprocesses (one BLAS thread: the machine is small)."""
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def run_tool(tool: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run a tool to its end, captured."""
    return subprocess.run(command(tool, argv), cwd=REPO, capture_output=True, text=True, env=env(), timeout=300)
