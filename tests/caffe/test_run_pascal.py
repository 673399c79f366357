"""The DeepLab release's way of working, unchanged, with this project's ``caffe``: a shell script
in the style of its exper/run_pascal.sh fills old-syntax prototxts with sed (sub.sed), runs
``$CAFFE_BIN train --solver=... --weights=init.caffemodel`` and ``$CAFFE_BIN test --model=...
--weights=<newest snapshot> --iterations=<lines of val.txt>``, and MatWrite leaves one .mat per
val image. Everything (VOC-style layout, script, sub.sed, prototxts) is written here, in the
release's style: V1 ``layers {}``, ``${VAR}`` placeholders, IMAGE_SEG_DATA, the fork's ``hole``,
INTERP, SEG_ACCURACY, MAT_WRITE, SILENCE, and a top-less SOFTMAX_LOSS as the release declares it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import scipy.io
import torch
from PIL import Image

from caffe.data.stream import NetFeed
from caffe.model_io import load_caffemodel, load_solverstate, save_caffemodel
from caffe.net import Net
from deeplab.data.synthetic import CLASSES, render
from deeplab.labels import write_label

CAFFE = shutil.which("caffe", path=os.path.dirname(sys.executable))
IDS = {"train_aug": [f"2007_{i:06d}" for i in range(6)], "val": ["2008_000001", "2008_000002", "2008_000003"]}
NUM_LABELS = len(CLASSES)

RUN_PASCAL = r"""#!/bin/sh

## MODIFY PATH for YOUR SETTING
ROOT_DIR=@ROOT_DIR@

CAFFE_BIN=${CAFFE_BIN:-caffe}

EXP=voc12

if [ "${EXP}" = "voc12" ]; then
    NUM_LABELS=@NUM_LABELS@
    DATA_ROOT=${ROOT_DIR}/VOCdevkit/VOC2012
else
    NUM_LABELS=0
    echo "Wrong exp name"
fi

## Specify which model to train
NET_ID=tiny_largeFOV

TRAIN_SET_SUFFIX=_aug

DEV_ID=

## Create dirs

CONFIG_DIR=${EXP}/config/${NET_ID}
MODEL_DIR=${EXP}/model/${NET_ID}
mkdir -p ${MODEL_DIR}
LOG_DIR=${EXP}/log/${NET_ID}
mkdir -p ${LOG_DIR}
export GLOG_log_dir=${LOG_DIR}

## Run

RUN_TRAIN=1
RUN_TEST=1

## Training #1 (on train_aug)

if [ ${RUN_TRAIN} -eq 1 ]; then
    LIST_DIR=${EXP}/list
    TRAIN_SET=train${TRAIN_SET_SUFFIX}
    MODEL=${EXP}/model/${NET_ID}/init.caffemodel
    echo Training net ${EXP}/${NET_ID}
    for pname in train solver; do
        sed "$(eval echo $(cat sub.sed))" \
            ${CONFIG_DIR}/${pname}.prototxt > ${CONFIG_DIR}/${pname}_${TRAIN_SET}.prototxt
    done
    CMD="${CAFFE_BIN} train \
         --solver=${CONFIG_DIR}/solver_${TRAIN_SET}.prototxt \
         --gpu=${DEV_ID}"
    if [ -f ${MODEL} ]; then
        CMD="${CMD} --weights=${MODEL}"
    fi
    echo Running ${CMD} && ${CMD}
fi

## Test #1 specification (on val or test)

if [ ${RUN_TEST} -eq 1 ]; then
    for TEST_SET in val; do
        TEST_ITER=`cat ${EXP}/list/${TEST_SET}.txt | wc -l`
        MODEL=${EXP}/model/${NET_ID}/test.caffemodel
        if [ ! -f ${MODEL} ]; then
            MODEL=`ls -t ${EXP}/model/${NET_ID}/train_iter_*.caffemodel | head -n 1`
        fi
        echo Testing net ${EXP}/${NET_ID}
        FEATURE_DIR=${EXP}/features/${NET_ID}
        mkdir -p ${FEATURE_DIR}/${TEST_SET}/fc8
        sed "$(eval echo $(cat sub.sed))" \
            ${CONFIG_DIR}/test.prototxt > ${CONFIG_DIR}/test_${TEST_SET}.prototxt
        CMD="${CAFFE_BIN} test \
             --model=${CONFIG_DIR}/test_${TEST_SET}.prototxt \
             --weights=${MODEL} \
             --gpu=${DEV_ID} \
             --iterations=${TEST_ITER}"
        echo Running ${CMD} && ${CMD}
    done
fi
"""

SUB_SED = ("'s,${DATA_ROOT},'\"${DATA_ROOT}\"',g;s,${EXP},'\"${EXP}\"',g;s,${TRAIN_SET},'\"${TRAIN_SET}\"',g;"
           "s,${TEST_SET},'\"${TEST_SET}\"',g;s,${NET_ID},'\"${NET_ID}\"',g;s,${FEATURE_DIR},'\"${FEATURE_DIR}\"',g;"
           "s,${NUM_LABELS},'\"${NUM_LABELS}\"',g'\n")

SOLVER = """train_net: "${EXP}/config/${NET_ID}/train_${TRAIN_SET}.prototxt"

lr_policy: "step"
gamma: 0.1
stepsize: 2000
base_lr: 0.001

display: 2
max_iter: 6
momentum: 0.9
weight_decay: 0.0005

snapshot: 3
snapshot_prefix: "${EXP}/model/${NET_ID}/train"
solver_mode: GPU
"""

DATA = """layers {
  name: "data"
  type: IMAGE_SEG_DATA
  top: "data"
  top: "label"
  image_data_param {
    root_folder: "${DATA_ROOT}"
    source: "${EXP}/list/@SET@.txt"
@EXTRA@  }
  transform_param {
    mean_value: 104.008
    mean_value: 116.669
    mean_value: 122.675
    crop_size: 33
    mirror: @MIRROR@
  }
  include: { phase: @PHASE@ }
}
"""


def conv(name, bottom, num_output, kernel, pad=0, hole=0, filler=False, lr=(1, 2)):
    extra = f"    hole: {hole}\n" if hole else ""
    if filler:
        extra += ("    weight_filler {\n      type: \"gaussian\"\n      std: 0.01\n    }\n"
                  "    bias_filler {\n      type: \"constant\"\n      value: 0\n    }\n")
    return (f"layers {{\n  bottom: \"{bottom}\"\n  top: \"{name}\"\n  name: \"{name}\"\n  type: CONVOLUTION\n"
            f"  blobs_lr: {lr[0]}\n  blobs_lr: {lr[1]}\n  weight_decay: 1\n  weight_decay: 0\n"
            f"  convolution_param {{\n    num_output: {num_output}\n    pad: {pad}\n    kernel_size: {kernel}\n"
            f"{extra}  }}\n}}\n")


def simple(name, kind, bottom, top, body=""):
    return f"layers {{\n  bottom: \"{bottom}\"\n  top: \"{top}\"\n  name: \"{name}\"\n  type: {kind}\n{body}}}\n"


def network() -> str:
    """conv-relu-pool x3 (stride 8, pooling 3x3 stride 2 as the release's), fc6 3x3 with hole 2,
    fc7 1x1, dropout, fc8_${EXP} with ${NUM_LABELS} outputs: 33x33 crops give 5x5 scores."""
    text, bottom = "### NETWORK ###\n\n", "data"
    for k in (1, 2, 3):
        text += conv(f"conv{k}_1", bottom, 8, 3, pad=1)
        text += simple(f"relu{k}_1", "RELU", f"conv{k}_1", f"conv{k}_1")
        text += simple(f"pool{k}", "POOLING", f"conv{k}_1", f"pool{k}",
                       "  pooling_param {\n    pool: MAX\n    kernel_size: 3\n    stride: 2\n    pad: 1\n  }\n")
        bottom = f"pool{k}"
    text += conv("fc6", "pool3", 16, 3, pad=2, hole=2)
    text += simple("relu6", "RELU", "fc6", "fc6")
    text += simple("drop6", "DROPOUT", "fc6", "fc6", "  dropout_param {\n    dropout_ratio: 0.5\n  }\n")
    text += conv("fc7", "fc6", 16, 1)
    text += simple("relu7", "RELU", "fc7", "fc7")
    text += simple("drop7", "DROPOUT", "fc7", "fc7", "  dropout_param {\n    dropout_ratio: 0.5\n  }\n")
    text += conv("fc8_${EXP}", "fc7", "${NUM_LABELS}", 1, filler=True, lr=(10, 20))
    return text


def train_prototxt() -> str:
    data = DATA.replace("@SET@", "${TRAIN_SET}").replace("@MIRROR@", "true").replace("@PHASE@", "TRAIN")
    data = data.replace("@EXTRA@", "    label_type: PIXEL\n    batch_size: 2\n    shuffle: true\n")
    return ('name: "${NET_ID}"\n\n' + data + "\n" + network() + """
layers {
  bottom: "label"
  top: "label_shrink"
  name: "label_shrink"
  type: INTERP
  interp_param {
    shrink_factor: 8
    pad_beg: 0
    pad_end: 0
  }
}
layers {
  name: "loss"
  type: SOFTMAX_LOSS
  bottom: "fc8_${EXP}"
  bottom: "label_shrink"
  softmaxloss_param {
    ignore_label: 255
  }
  include: { phase: TRAIN }
}
layers {
  name: "accuracy"
  type: SEG_ACCURACY
  bottom: "fc8_${EXP}"
  bottom: "label_shrink"
  top: "accuracy"
  seg_accuracy_param {
    ignore_label: 255
  }
}
""")


def score_prototxt() -> str:
    data = DATA.replace("@SET@", "${TEST_SET}").replace("@MIRROR@", "false").replace("@PHASE@", "TEST")
    data = data.replace("@EXTRA@", "    batch_size: 1\n    has_label: false\n")
    return ('name: "${NET_ID}"\n\n' + data + "\n" + network() + """
layers {
  bottom: "fc8_${EXP}"
  top: "fc8_interp"
  name: "fc8_interp"
  type: INTERP
  interp_param {
    zoom_factor: 8
  }
}

layers {
  name: "fc8_mat"
  type: MAT_WRITE
  bottom: "fc8_interp"
  mat_write_param {
    prefix: "${FEATURE_DIR}/${TEST_SET}/fc8/"
    source: "${EXP}/list/${TEST_SET}_id.txt"
    strip: 0
    period: 1
  }
  include: { phase: TEST }
}

layers {
  bottom: "label"
  name: "silence"
  type: SILENCE
  include: { phase: TEST }
}
""")


def make_layout(root) -> None:
    """VOCdevkit/VOC2012/{JPEGImages,SegmentationClassAug} with small synthetic scenes (30-32 px,
    smaller than the 33 crop so the data layer pads) and exper/voc12/list/*.txt as the release's."""
    voc = root / "VOCdevkit" / "VOC2012"
    lists = root / "exper" / "voc12" / "list"
    for d in (voc / "JPEGImages", voc / "SegmentationClassAug", lists):
        d.mkdir(parents=True)
    index = 0
    for split, ids in IDS.items():
        lines = []
        for name in ids:
            img, label = render(5, index, 32)
            img, label = img[: 30 + index % 3], label[: 30 + index % 3]
            Image.fromarray(img).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
            write_label(voc / "SegmentationClassAug" / f"{name}.png", label)
            lines.append(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png")
            index += 1
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
        (lists / f"{split}_id.txt").write_text("\n".join(ids) + "\n")


def test_run_pascal_train_and_test_steps_work_with_this_caffe(tmp_path, monkeypatch):
    make_layout(tmp_path)
    exper = tmp_path / "exper"
    config = exper / "voc12" / "config" / "tiny_largeFOV"
    config.mkdir(parents=True)
    (config / "train.prototxt").write_text(train_prototxt())
    (config / "test.prototxt").write_text(score_prototxt())
    (config / "solver.prototxt").write_text(SOLVER)
    (exper / "sub.sed").write_text(SUB_SED)
    (exper / "run_pascal.sh").write_text(RUN_PASCAL.replace("@ROOT_DIR@", str(tmp_path))
                                         .replace("@NUM_LABELS@", str(NUM_LABELS)))
    monkeypatch.chdir(exper)  # the release runs from exper/: its paths are relative to it
    # The "ImageNet" init: every layer but fc8_voc12 (which starts from its gaussian filler).
    mapping = {"DATA_ROOT": str(tmp_path / "VOCdevkit" / "VOC2012"), "EXP": "voc12", "TRAIN_SET": "train_aug",
               "NET_ID": "tiny_largeFOV", "NUM_LABELS": str(NUM_LABELS)}
    torch.manual_seed(0)
    init_net = Net(str(config / "train.prototxt"), "TRAIN", mapping)
    for layer in init_net.layers:
        for blob in layer.blobs:
            torch.nn.init.normal_(blob.data, 0.0, 0.1 if blob.dim() > 1 else 0.05)
    init = {b.name: b for b in init_net.layer_blobs() if b.name != "fc8_voc12"}
    model_dir = exper / "voc12" / "model" / "tiny_largeFOV"
    save_caffemodel(model_dir / "init.caffemodel", list(init.values()), "init")

    env = dict(os.environ, CAFFE_BIN=CAFFE, OMP_NUM_THREADS="1")
    proc = subprocess.run(["sh", "run_pascal.sh"], cwd=exper, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr[-4000:]

    # Training: snapshots every 3 iterations, started from init.caffemodel (fc8 from its filler).
    for it in (3, 6):
        assert load_solverstate(model_dir / f"train_iter_{it}.solverstate").iter == it
    trained = {layer.name: layer.blobs for layer in load_caffemodel(model_dir / "train_iter_6.caffemodel")}
    assert set(trained) == set(init) | {"fc8_voc12"}
    assert not np.array_equal(trained["conv1_1"][0], init["conv1_1"].blobs[0])
    assert "Finetuning from voc12/model/tiny_largeFOV/init.caffemodel: copied 5 layers" in proc.stderr
    assert "Running for 3 iterations." in proc.stderr  # TEST_ITER = lines of val.txt

    # glog's files in GLOG_log_dir, one per run; caffe.INFO links to one of them.
    log_dir = exper / "voc12" / "log" / "tiny_largeFOV"
    logs = {p.name: p.read_text() for p in log_dir.glob("caffe.*.log.INFO.*")}
    assert len(logs) == 2 and os.readlink(log_dir / "caffe.INFO") in logs
    assert sorted("Starting Optimization" in t for t in logs.values()) == [False, True]

    # Testing: one MATLAB file per val image, W x H x C x 1 as the fork wrote them, equal to the
    # newest snapshot's fc8_interp on the centred (padded) crop.
    net = Net(str(config / "test_val.prototxt"), "TEST")
    net.copy_from(str(model_dir / "train_iter_6.caffemodel"))
    net.layer("fc8_mat").prefix = str(tmp_path / "again" / "")  # leave the script's files alone
    feed = NetFeed(net)
    try:
        with torch.no_grad():
            for i, name in enumerate(IDS["val"]):
                expected = net(feed(i), outputs="all")["fc8_interp"][0].numpy()
                assert np.isfinite(expected).all(), "the tiny net's scores must be finite to compare"
                data = scipy.io.loadmat(exper / "voc12" / "features" / "tiny_largeFOV" / "val" / "fc8"
                                        / f"{name}_blob_0.mat")["data"]
                assert data.shape == (33, 33, NUM_LABELS, 1)
                np.testing.assert_allclose(data[..., 0].transpose(2, 1, 0), expected, rtol=1e-5, atol=1e-5)
    finally:
        feed.close()
    assert len(list((exper / "voc12" / "features" / "tiny_largeFOV" / "val" / "fc8").iterdir())) == len(IDS["val"])
