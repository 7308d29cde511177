# The README's two commands: `make run` (set up, then the main job) and `make test` (set up, then the tests).
# Both start from a fresh machine: they create .venv and install everything the project needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test test-slow test-isa clean figures

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

# Machines unlike the author's, simulated (.ci/run runs it after `make test`): the kernel, variant and fuzz tests
# (default selection) once per forced build target (RNNLAB_ISA; `base` and, on an AVX-512 CPU, `avx2` are builds
# of their own, 1-2 min each), once on MKL's CPU-independent code path (MKL_CBWR=COMPATIBLE) and once with MKL's
# packed GEMM at every size and row count (RNNLAB_FUSED_PACK_MIN=1: by default only recurrent weights of 128K
# elements or more; RNNLAB_PANEL_GEMM=0: by default panel_gemm runs products of 5-64 rows, except on Intel AVX-512).
# Each run fails on any failure and on "no tests collected" (pytest's exit 5).
ISA_TESTS = tests/test_fused*.py tests/test_*kernel*.py tests/test_variants.py tests/test_fuzz.py \
            tests/test_extension_build.py
test-isa: setup
	RNNLAB_ISA=avx2 $(BIN)/python -m pytest -q $(ISA_TESTS)
	RNNLAB_ISA=base $(BIN)/python -m pytest -q $(ISA_TESTS)
	MKL_CBWR=COMPATIBLE $(BIN)/python -m pytest -q $(ISA_TESTS)
	RNNLAB_FUSED_PACK_MIN=1 RNNLAB_PANEL_GEMM=0 $(BIN)/python -m pytest -q $(ISA_TESTS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

# Every figure of docs/guide.md, docs/zh/ and docs/results.md (results figures are drawn from the JSON files that
# benchmarks/convergence/*.py write).
figures: setup
	$(BIN)/python scripts/make_figures.py
