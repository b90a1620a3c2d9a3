# Every target sets up .venv itself (idempotent): torch first, then the project in editable
# mode with its dev extra (which finds torch installed and leaves it). The project's own
# dependencies go in through uv (installs wheels in parallel: ~10 s instead of pip's ~60 s);
# where uv cannot be installed or cannot reach an index, pip does the same install.
#
# torch: the CPU build on a machine without an NVIDIA GPU (PyTorch's CPU wheel index: no CUDA
# packages), PyPI's CUDA build on one with `nvidia-smi`. Force either with TORCH=cpu or
# TORCH=cuda (`make setup TORCH=cuda`). If the CPU index cannot be reached (a firewall, a
# mirror-only machine), pip's own index is the fallback: a local wheel or mirror if pip is
# configured with one, else PyPI's build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)

.PHONY: setup demo test lint toy bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
ifeq ($(TORCH),cuda)
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
else ifeq ($(TORCH),cpu)
	$(BIN)/pip install --quiet --timeout 20 --retries 1 --index-url $(TORCH_CPU_INDEX) \
		torch==$(TORCH_VERSION) \
	|| { echo "PyTorch's CPU index cannot be reached: torch from pip's own index"; \
		$(BIN)/pip install --quiet torch==$(TORCH_VERSION); }
else
	@echo "TORCH=$(TORCH): give TORCH=cpu or TORCH=cuda"; exit 2
endif
	{ $(BIN)/pip install --quiet uv && $(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[dev]"; } \
	|| { echo "uv could not install the project: pip does"; $(BIN)/pip install --quiet -e ".[dev]"; }
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	WANDB_MODE=offline $(BIN)/relax-rl train --algo relax --env CartPole-v1 --until-solved \
		--out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	WANDB_MODE=disabled $(BIN)/pytest -q -n auto --dist worksteal --durations=20

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

toy: $(STAMP)
	$(BIN)/relax-rl toy --out runs/toy

bench: $(STAMP)
	$(BIN)/python bench/estimators.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
