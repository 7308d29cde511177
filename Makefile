# The README's two commands: `make run` (set up, then the main job) and `make test` (set up, then the tests).
# Both start from a fresh machine: they create .venv and install everything the project needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test test-slow clean figures

setup: $(VENV)/.installed

# torch is installed first and pinned: ==2.13.0 resolves to the CPU wheel that this project's machines carry,
# where a looser requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,data,export]"
	touch $@

# The main job: `rnnlab train` with its defaults (configs/shakespeare.toml): an LSTM character model on
# Shakespeare, 800 steps, then a generated sample; results in runs/shakespeare-lstm/. --overwrite: each `make run`
# replaces the previous one's folder (`rnnlab train` alone refuses to train over an existing run).
run: setup
	$(BIN)/rnnlab train --overwrite

# The default suite (tests marked `slow` are excluded by pyproject's addopts), then the type check of the package.
test: setup
	$(BIN)/python -m pytest -q
	$(BIN)/python -m mypy

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

# Every figure of docs/guide.md, docs/zh/ and docs/results.md (results figures are drawn from the JSON files that
# benchmarks/convergence/*.py write).
figures: setup
	$(BIN)/python scripts/make_figures.py
