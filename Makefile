# DeepLab, prototxt-driven. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: install test proto clean-venv

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
