# Every target sets up .venv itself (idempotent): torch==2.13.0 first, so that pip never
# resolves a CUDA build, then the project in editable mode with its dev extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint toy bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	WANDB_MODE=offline $(BIN)/relax-rl train --algo relax --env CartPole-v1 --until-solved \
		--out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	WANDB_MODE=disabled $(BIN)/pytest -q -n auto --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

toy: $(STAMP)
	$(BIN)/relax-rl toy --out runs/toy

bench: $(STAMP)
	$(BIN)/python bench/estimators.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
