# DeepLab, prototxt-driven.
#   make demo                      the whole pipeline on the embedded synthetic set (CPU, minutes)
#   make test                      install and run the test suite
#   make train|extract|crf|eval|search|report|bench EXP=voc12/DeepLab-LargeFOV [GPU=0] [SET=val]
# Stages depend on files, so `make eval` runs only what is missing. Experiment outputs go to
# exper/<dataset>/<NET_ID>/{model,features,res,log} (the release's folders, one experiment each).
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
  NUM_LABELS ?= 21
  CLASSES ?= voc12
  IMAGES ?= $(DATA_ROOT)/JPEGImages
  GT ?= $(DATA_ROOT)/SegmentationClassAug
else ifeq ($(DATASET),camvid)
  DATA_ROOT ?= data/camvid/CamVid
  LIST_DIR ?= data/camvid/list
  TRAIN_SET ?= train
  NUM_LABELS ?= 11
  CLASSES ?= camvid
  IMAGES ?= $(DATA_ROOT)/images
  GT ?= $(DATA_ROOT)/labels
  CAMVID_SRC ?= ../shared/data/camvid
else ifeq ($(DATASET),synthetic)
  DATA_ROOT ?= data/synthetic/out
  LIST_DIR ?= data/synthetic/out/list
  TRAIN_SET ?= train
  NUM_LABELS ?= 6
  CLASSES ?= synthetic
  IMAGES ?= $(DATA_ROOT)/images
  GT ?= $(DATA_ROOT)/labels
endif

INIT ?= models/init/$(DATASET)/$(NET_ID).caffemodel
VARS := --set NET_ID=$(NET_ID) --set EXP=$(EXPER) --set DATA_ROOT=$(DATA_ROOT) --set LIST_DIR=$(LIST_DIR) \
        --set TRAIN_SET=$(TRAIN_SET) --set TEST_SET=$(SET) --set NUM_LABELS=$(NUM_LABELS) \
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
SEARCH_N ?= 100
SEARCH_ARGS ?=

.PHONY: install test proto clean-venv demo train extract crf eval search report bench netinfo \
        data-synthetic data-camvid data-voc12 init-vgg16

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

## Regenerate deeplab/proto/caffe_pb2.py from caffe.proto (protoc from grpcio-tools).
proto: install
	cd deeplab/proto && ../../$(PY) -m grpc_tools.protoc --proto_path=. --python_out=. caffe.proto

test: install
	$(PY) -m pytest tests

clean-venv:
	rm -rf $(VENV)

# ------------------------------------------------------------------ stages
netinfo: install
	$(PY) tools/netinfo.py $(CONF)/test.prototxt --phase TEST $(VARS)

train: $(MODEL)
$(MODEL): $(CONF)/solver.prototxt $(CONF)/train.prototxt | install
	$(PY) tools/train.py --solver $(CONF)/solver.prototxt $(if $(wildcard $(INIT)),--weights $(INIT),) \
	    $(VARS) $(GPU_ARG) --log-file $(EXPER)/log/train.log $(TRAIN_ARGS)

extract: $(FEATURES)/.done
$(FEATURES)/.done: $(WEIGHTS) $(CONF)/test.prototxt
	$(PY) tools/extract.py --model $(CONF)/test.prototxt --weights $(WEIGHTS) --list $(LIST_DIR)/$(SET).txt \
	    --root $(DATA_ROOT) --out $(FEATURES) --labels-out $(RES)/dcnn --classes $(CLASSES) $(VARS) $(GPU_ARG)
	touch $@

crf: $(RES)/crf/.done
$(RES)/crf/.done: $(FEATURES)/.done
	$(PY) -m densecrf --images $(IMAGES) --scores $(FEATURES) --list $(LIST_DIR)/$(SET).txt --out $(RES)/crf \
	    --classes $(CLASSES) -j $(JOBS) $(CRF_ARGS)
	touch $@

$(RES)/eval_dcnn.json: $(FEATURES)/.done
	$(PY) tools/eval.py --pred $(RES)/dcnn --gt $(GT) --list $(LIST_DIR)/$(SET).txt --classes $(CLASSES) \
	    --ignore 255 --name DCNN --json $@ -j $(JOBS) --quiet > /dev/null
$(RES)/eval_crf.json: $(RES)/crf/.done
	$(PY) tools/eval.py --pred $(RES)/crf --gt $(GT) --list $(LIST_DIR)/$(SET).txt --classes $(CLASSES) \
	    --ignore 255 --name DCNN+CRF --json $@ -j $(JOBS) --quiet > /dev/null

eval: $(RES)/eval_dcnn.json $(RES)/eval_crf.json
	$(PY) tools/eval.py --compare $^ --plot $(RES)/trimap.png

search: $(RES)/crf_search/best.json
$(RES)/crf_search/best.json: $(FEATURES)/.done
	$(PY) tools/crf_search.py --images $(IMAGES) --scores $(FEATURES) --labels $(GT) --list $(LIST_DIR)/$(SET).txt \
	    --out $(RES)/crf_search --classes $(CLASSES) --n $(SEARCH_N) -j $(JOBS) $(SEARCH_ARGS)

report: $(EXPER)/report.html
$(EXPER)/report.html: $(RES)/eval_dcnn.json $(RES)/eval_crf.json
	$(PY) tools/report.py $(EXPER) --images $(IMAGES) --gt $(GT) --list $(LIST_DIR)/$(SET).txt \
	    --classes $(CLASSES) --set $(SET) -o $@
