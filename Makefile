# The two commands of the README: `make demo` and `make test`. Both create the venv when it is missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat constraints.txt pyproject.toml | cksum | cut -d' ' -f1)
# torch and torchvision are pinned together on every pip call (docs/install.md).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

# Side effects stay in the checkout; nothing reaches for a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HOME := $(CURDIR)/.cache/huggingface
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export NUMBA_CACHE_DIR := $(CURDIR)/.cache/numba
export AVGEO_HOME := $(CURDIR)/.cache/avgeo
export WANDB_MODE := disabled
export RAY_AUTH_MODE := disabled
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test lint format clean

setup: $(STAMP)

$(STAMP): constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==25.3"
	time $(PY) -m pip install --quiet -c constraints.txt $(TORCH_PINS) -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(VENV)/bin/avgeo demo --out out/demo

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint:
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf out .cache .pytest_cache .ruff_cache
