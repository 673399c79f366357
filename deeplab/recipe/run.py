"""One experiment as one call on a lent machine: train, extract, pack the results.

A GPU machine lent for a few minutes receives the working tree plus a pack folder (made by
``make_pack`` here: the dataset as JPEG + PNG in one .npz, the initial weights as float16,
the wheels the machine lacks) and sends back at most a few files of 16 MiB. ``run`` does the
whole experiment there (or here, as a dry run on the CPU): unpack, train with a time budget,
round the final weights to float16 (so that the weights sent back are exactly those the score
maps come from), extract each set's score maps and DCNN labels, and pack them into archives
of at most 15 MiB. ``receive`` unpacks those archives into an experiment folder here, where the
CRF and the evaluation run (tools/densecrf, tools/crf_search.py, tools/eval.py).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import time

from .. import DeepLabError
from ..cli import parse_set
from . import lease
from .pack import (pack_dataset, pack_folder, pack_weights, save_float16, unpack_archives, unpack_dataset,
                   unpack_weights)

DATASET_PACK = "dataset.npz"
INIT_PACK = "init.npz"
WHEELS = "wheels"
SAMPLE = "sample"          # the CRF bench's VOC sample image (../shared does not travel)
MODEL = "model/final.caffemodel"
EXTRACT_RESERVE_S = 90     # kept from the training budget for extraction and packing (H100: about 60 s)
SMALL_FILES = 1 << 20      # train.log, recipe.json, crf_throughput.txt beside the archives


def make_pack(out: str, root: str, list_dir: str, sets: list[str], init: str, init_layers: str,
              quality: int = 80, wheels: list[str] = (), sample: str | None = None) -> dict:
    """Fill the folder ``out`` with what ``run`` needs on a machine without the data: the dataset
    pack, the initial weights (layers matching ``init_layers``) as float16, ``wheels`` (files
    copied into out/wheels, put on sys.path by the recipe's shell script) and the files of the
    folder ``sample`` (the CRF bench's sample image, into out/sample). Returns sizes."""
    os.makedirs(out, exist_ok=True)
    if sample:
        if not os.path.isdir(sample):
            raise DeepLabError(f"{sample}: no such folder (the CRF bench's sample image)")
        shutil.rmtree(os.path.join(out, SAMPLE), ignore_errors=True)
        shutil.copytree(sample, os.path.join(out, SAMPLE))
    counts = pack_dataset(root, list_dir, sets, os.path.join(out, DATASET_PACK), quality)
    layers = pack_weights(init, os.path.join(out, INIT_PACK), init_layers)
    if wheels:
        os.makedirs(os.path.join(out, WHEELS), exist_ok=True)
        for w in wheels:
            shutil.copy(w, os.path.join(out, WHEELS))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    return {"images": counts, "init_layers": layers, "bytes": size}


def _mapping(conf: str, exp: str, data: str, set_name: str = "val") -> list[str]:
    values = {"NET_ID": os.path.basename(os.path.normpath(conf)), "EXP": exp, "DATA_ROOT": data,
              "LIST_DIR": os.path.join(data, "list"), "TRAIN_SET": "train", "TEST_SET": set_name,
              "FEATURE_DIR": os.path.join(exp, "features")}
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def _final_snapshot(model_dir: str) -> str:
    found = glob.glob(os.path.join(model_dir, "train_iter_*.caffemodel"))
    if not found:
        raise DeepLabError(f"{model_dir}: training wrote no snapshot")
    return max(found, key=lambda p: int(re.search(r"_iter_(\d+)\.caffemodel$", p).group(1)))


def run(pack: str, conf: str, out: str, work: str, *, gpu: int | None, amp: str | None, channels_last: bool,
        workers: int, minutes: float | None, sets: list[str], classes: str, batch: int = 1,
        max_bytes: int = 15 << 20, dry_run: bool = False, deadline: float | None = None,
        max_total: int = lease.RETURN_BYTES - lease.RETURN_HEADROOM_BYTES - SMALL_FILES) -> dict:
    """The whole experiment from ``pack`` with the nets of ``conf`` (solver/train/test.prototxt),
    working in ``work``; archives (``max_total`` bytes at most together; files past it, the
    weights first, are left out and named in the record), the training log and ``recipe.json``
    (timings, iterations, the commands) go to ``out``. ``minutes`` is the training time budget;
    ``deadline`` (a time.time() value) ends the work cleanly: training stops early enough for
    the extraction, and a set whose extraction would start past it is skipped. Training data
    loaders are sized to /dev/shm. Extraction runs in float32 whatever ``amp`` is (autocast is
    for training; score maps are saved as float16). ``dry_run``: the same steps with 2
    iterations and the first 3 images of each set (a check of the script on a CPU)."""
    from ..extract.runner import ExtractJob, extract_list
    from caffe.tool.training import TrainOptions, train
    from ..labels import load_classes
    for name in ("solver", "train", "test"):
        if not os.path.isfile(os.path.join(conf, f"{name}.prototxt")):
            raise DeepLabError(f"{conf}: no {name}.prototxt")
    for name in (DATASET_PACK, INIT_PACK):
        if not os.path.isfile(os.path.join(pack, name)):
            raise DeepLabError(f"{pack}: no {name} (make it with: deeplab-recipe pack)")
    info = load_classes(classes)
    os.makedirs(out, exist_ok=True)
    timings, commands = {}, []
    t = time.time()
    data, exp = os.path.join(work, "data"), os.path.join(work, "exp")
    counts = unpack_dataset(os.path.join(pack, DATASET_PACK), data)
    init = os.path.join(work, "init.caffemodel")
    unpack_weights([os.path.join(pack, INIT_PACK)], init)
    timings["unpack_s"] = time.time() - t

    solver = os.path.join(conf, "solver.prototxt")
    if dry_run:
        solver = os.path.join(work, "solver.prototxt")
        with open(os.path.join(conf, "solver.prototxt")) as f:
            text = re.sub(r"^\s*max_iter:.*$", "max_iter: 2", f.read(), flags=re.M)
        with open(solver, "w") as f:
            f.write(text)
        for set_name in sets:
            path = os.path.join(data, "list", f"{set_name}.txt")
            with open(path) as f:
                head = f.readlines()[:3]
            with open(path, "w") as f:
                f.writelines(head)
    if deadline is not None:
        left = (deadline - time.time() - EXTRACT_RESERVE_S) / 60
        if left <= 0:
            raise DeepLabError(f"the deadline leaves no time to train (it is {EXTRACT_RESERVE_S} s away or less)")
        minutes = min(minutes, left) if minutes else left
    batch_bytes = lease.train_batch_bytes(os.path.join(conf, "train.prototxt"))
    loaders = lease.loader_workers(workers, batch_bytes)
    device = ["--gpu", str(gpu)] if gpu is not None else ["--cpu"]
    labels = ["--set", f"NUM_LABELS={info.num_classes}", "--set", f"IGNORE_LABEL={info.ignore}"]
    argv = (["--solver", solver, "--weights", init, "--log-file",
             os.path.join(out, "train.log"), "--workers", str(loaders), "--quiet"] + device + labels
            + _mapping(conf, exp, data) + (["--amp", amp] if amp else []) + (["--channels-last"] if channels_last else [])
            + (["--time-budget", str(minutes)] if minutes else []))
    commands.append(["deeplab-train"] + argv)   # what ran, as the command that does the same
    settings = labels + _mapping(conf, exp, data)
    options = TrainOptions(weights=[init], mapping=parse_set(settings[1::2]), gpus=None if gpu is None else str(gpu),
                           cpu=gpu is None, log_file=os.path.join(out, "train.log"), log_stderr=False,
                           progress=False, amp=amp, channels_last=channels_last, workers=loaders,
                           time_budget=minutes * 60 if minutes else None)
    t = time.time()
    if not train(solver, options):
        raise DeepLabError("training was stopped by a signal")
    timings["train_s"] = time.time() - t
    snapshot = _final_snapshot(os.path.join(exp, "model"))
    iterations = int(re.search(r"_iter_(\d+)\.caffemodel$", snapshot).group(1))

    # The weights sent back are float16: extract with exactly those.
    back = os.path.join(work, "back")
    weights_dir = os.path.join(back, "weights")
    os.makedirs(weights_dir, exist_ok=True)
    from caffe.model_io import load_caffemodel
    layers = [layer for layer in load_caffemodel(snapshot) if layer.blobs]   # read once, one part per layer
    parts = [os.path.join(weights_dir, f"{k:02d}_{layer.name}.npz") for k, layer in enumerate(layers)]
    for layer, part in zip(layers, parts):
        save_float16([layer], part, snapshot)
    final = os.path.join(exp, MODEL)
    unpack_weights(parts, final)

    t = time.time()
    skipped = []
    for set_name in sets:
        if deadline is not None and time.time() > deadline:
            skipped.append(set_name)
            continue
        argv = (["--model", os.path.join(conf, "test.prototxt"), "--weights", final,
                 "--list", os.path.join(data, "list", f"{set_name}.txt"), "--root", data,
                 "--out", os.path.join(back, "features", set_name),
                 "--labels-out", os.path.join(back, "res", set_name, "dcnn"), "--classes", classes,
                 "--batch", str(batch), "--workers", str(max(1, workers)), "--quiet"]
                + (["--gpu", str(gpu)] if gpu is not None else [])
                + labels + _mapping(conf, exp, data, set_name))
        commands.append(["deeplab-extract"] + argv)   # what ran, as the command that does the same
        settings = labels + _mapping(conf, exp, data, set_name)
        extract_list(ExtractJob(
            model=os.path.join(conf, "test.prototxt"), weights=final, list=os.path.join(data, "list", f"{set_name}.txt"),
            root=data, out=os.path.join(back, "features", set_name),
            labels_out=os.path.join(back, "res", set_name, "dcnn"), classes=classes, batch=batch,
            workers=max(1, workers), progress=False, gpu=gpu, mapping=parse_set(settings[1::2])))
    timings["extract_s"] = time.time() - t
    t = time.time()
    omitted: list[str] = []
    archives = pack_folder(back, os.path.join(out, "results"), max_bytes, max_total, omitted)
    timings["pack_s"] = time.time() - t
    record = {"conf": conf, "iterations": iterations, "images": counts, "sets": sets, "amp": amp,
              "extraction": "float32", "skipped_sets": skipped, "omitted": omitted,
              "loader_workers": loaders, "batch_bytes": batch_bytes,
              "channels_last": channels_last, "gpu": gpu, "device": _device_name(gpu), "timings": timings,
              "archives": [os.path.basename(a) for a in archives], "commands": commands,
              "python": sys.version.split()[0], "dry_run": dry_run}
    with open(os.path.join(out, "recipe.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def finish(out: str) -> dict:
    """The last step on the machine: check that what ``out`` holds comes back whole, within the
    limits less the headroom (lease.check_return), and list it in recipe.json ("returned")."""
    path = os.path.join(out, "recipe.json")
    if not os.path.isfile(path):
        raise DeepLabError(f"{out}: no recipe.json (the recipe did not finish)")
    with open(path) as f:
        record = json.load(f)
    record["returned"] = [f["name"] for f in lease.check_return(out)]
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    record["returned_files"] = lease.check_return(out)
    return record


def _device_name(gpu: int | None) -> str:
    import torch
    if gpu is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(gpu)
    import platform
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def receive(results: str, exper: str) -> dict:
    """Unpack ``run``'s archives from the folder ``results`` into the experiment folder ``exper``:
    features/<set>, res/<set>/dcnn, model/<final>.caffemodel (float32 from the float16 parts),
    log/train.log and recipe.json. Returns recipe.json's record."""
    record_path = os.path.join(results, "recipe.json")
    if not os.path.isfile(record_path):
        raise DeepLabError(f"{results}: no recipe.json (not the output of deeplab-recipe run)")
    with open(record_path) as f:
        record = json.load(f)
    archives = [os.path.join(results, a) for a in record["archives"]]
    for a in archives:
        if not os.path.isfile(a):
            raise DeepLabError(f"{a}: missing (recipe.json lists it)")
    unpacked = os.path.join(exper, ".received")
    shutil.rmtree(unpacked, ignore_errors=True)
    unpack_archives(archives, unpacked)
    parts = sorted(glob.glob(os.path.join(unpacked, "weights", "*.npz")))
    if not any(o.startswith("weights/") for o in record.get("omitted", [])):   # else: left out for room
        unpack_weights(parts, os.path.join(exper, "model", f"train_iter_{record['iterations']}.caffemodel"))
    for sub in ("features", "res"):
        for set_dir in glob.glob(os.path.join(unpacked, sub, "*")):
            dest = os.path.join(exper, sub, os.path.basename(set_dir))
            shutil.rmtree(os.path.join(dest, "dcnn") if sub == "res" else dest, ignore_errors=True)
            if sub == "res":
                os.makedirs(dest, exist_ok=True)
                shutil.move(os.path.join(set_dir, "dcnn"), os.path.join(dest, "dcnn"))
            else:
                shutil.move(set_dir, dest)
    shutil.rmtree(unpacked)
    os.makedirs(os.path.join(exper, "log"), exist_ok=True)
    if os.path.isfile(os.path.join(results, "train.log")):
        shutil.copy(os.path.join(results, "train.log"), os.path.join(exper, "log", "train.log"))
    shutil.copy(record_path, os.path.join(exper, "recipe.json"))
    return record
