# Two entry points for a fresh machine (Python >= 3.10 and pip): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The tested torch lives in pyproject.toml ([tool.lighthouse] torch = "X.Y.Z"); the install below reads it.
TORCH_VERSION := $(shell sed -n 's/^torch = "\([0-9.]*\)".*/\1/p' pyproject.toml)
ifeq ($(TORCH_VERSION),)
$(error no 'torch = "X.Y.Z"' line under [tool.lighthouse] in pyproject.toml)
endif
# A GPU box gets PyPI's CUDA build of torch; a CPU box the small CPU build (PyTorch's CPU index, which
# wins on the +cpu local version; where that index is unreachable pip falls back to what it finds).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_INDEX :=
TORCH_BUILD := cuda
else
TORCH_INDEX := --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu
TORCH_BUILD := cpu
# No GPU: Triton kernels run in Triton's interpreter so the kernel tests still exercise them.
export TRITON_INTERPRET ?= 1
endif
# One stamp per torch version and build: changing the pin (or moving the checkout to a GPU box) reinstalls.
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)-$(TORCH_BUILD)

.PHONY: setup demo test lint bench clean
setup: $(VENV)/.installed

$(TORCH_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH_INDEX) "torch==$(TORCH_VERSION)"
	rm -f $(VENV)/.torch-*
	touch $@

# The project and its extras, as pyproject.toml declares them (torch is already there, so pip keeps it).
$(VENV)/.installed: pyproject.toml $(TORCH_STAMP)
	$(BIN)/python -m pip install $(TORCH_INDEX) -e ".[dev,kernels]"
	touch $@

demo: setup  ## the main job: a small Lighthouse LM on the embedded corpus, then its dense recovery (one run folder)
	$(BIN)/python src/train.py fit --config configs/demo.yaml
	$(BIN)/python src/train.py fit --config configs/demo_recover.yaml --ckpt_path last

test: setup  ## the whole test suite (GPU tests are skipped without CUDA), after lint and format checks
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest -q

.PHONY: test-fast
# Measured 2026-12-02 on a 2-core CPU (load ~1): test-fast 2m20 (722 tests), `make test` 6m45 (783 tests and
# ruff); a busier box takes up to twice that.
test-fast: setup  ## the edit-test loop: every test not marked slow, kernels included (~2.5 min on a 2-core CPU; `test`: ~7)
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup  ## ruff's checks and its formatting (`ruff format src tests bench` applies it)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: setup  ## layer benchmark; needs a CUDA GPU. Without make, from a checkout: PYTHONPATH=src python bench/X.py
	PYTHONPATH=src $(BIN)/python bench/bench_attention.py

clean:
	rm -rf $(VENV) .pytest_cache
