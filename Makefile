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
TORCH_WHY := nvidia-smi lists a GPU
else
TORCH_INDEX := --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu
TORCH_BUILD := cpu
TORCH_WHY := $(if $(shell command -v nvidia-smi),nvidia-smi is here but lists no GPU (a driver problem?),no nvidia-smi)
# No GPU: Triton kernels run in Triton's interpreter so the kernel tests still exercise them.
export TRITON_INTERPRET ?= 1
endif
# One stamp per torch version and build: changing the pin (or moving the checkout to a GPU box) reinstalls.
TORCH_STAMP := $(VENV)/.torch-$(TORCH_VERSION)-$(TORCH_BUILD)

.PHONY: setup demo test lint bench clean
setup: $(VENV)/.installed

# On a GPU box a CPU build set up before (on a login node, or a checkout moved) is taken out first: "torch==X.Y.Z"
# is satisfied by X.Y.Z+cpu (PEP 440), so pip would keep it.
$(TORCH_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "torch $(TORCH_VERSION), $(TORCH_BUILD) build: $(TORCH_WHY)"
	if [ "$(TORCH_BUILD)" = cuda ] && $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)" \
		2>/dev/null; then $(BIN)/python -m pip uninstall -y -q torch; fi
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
# Measured 2026-12-02 on a 2-core CPU, quiet (load < 1): test-fast 2m28 (766 tests), `make test` 6m49 (827 tests
# and ruff; .ci/run on a fresh clone 7m56 in all); with a second job on the box (load ~1.8) test-fast took 6m11.
test-fast: setup  ## the edit-test loop: every test not marked slow, kernels included (~2.5 min on a 2-core CPU; `test`: ~7)
	$(BIN)/python -m pytest -q -m "not slow"

.PHONY: test-oldest
# The lower bounds in pyproject.toml, tried: torch, lightning and jsonargparse at the oldest versions it admits (read
# from its ">=" bounds, so raising one there moves this too), in a venv of their own, on the tests that use their
# APIs most (the CLI and its errors, configs, printed docs, training, resume, memory options). Not part of `test`:
# measured 2026-12-02 on the 2-core CPU box, the install takes ~5 min (6 GB: without PyTorch's CPU index pip takes
# PyPI's CUDA build) and the whole not-slow suite there ~15 min, which would take .ci/run past 20 min; the subset
# below takes ~3 min. The Triton kernels stay with `test`: Triton 3.2's interpreter (torch 2.6's) lacks ops they use.
OLDEST_VENV ?= .venv-oldest
OLDEST_PINS := $(shell sed -n -E 's/.*"(torch|lightning|jsonargparse\[signatures\])>=([0-9.]+).*/"\1==\2"/p' pyproject.toml)
OLDEST_TESTS ?= tests/test_versions.py tests/test_arg_errors.py tests/test_cli_settings.py tests/test_configs.py \
	tests/test_lighthouse_options_model.py tests/test_training.py tests/test_memory.py tests/test_load_checkpoint.py
# torch 2.6 and 2.7 (not yet 2.13) also save 3 tensors besides the block inputs under checkpoint_offload's hooks:
# the same results, more host copies. Those two exact counts are left out here.
OLDEST_SKIP := -k "not host_offload_moves_exactly and not host_copies_are_freed"

$(OLDEST_VENV)/.installed: pyproject.toml
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install $(TORCH_INDEX) $(OLDEST_PINS) -e ".[dev,kernels]"
	touch $@

test-oldest: $(OLDEST_VENV)/.installed  ## the API-heavy tests against the oldest torch/lightning/jsonargparse pyproject.toml admits (a second venv)
	$(OLDEST_VENV)/bin/python -m pytest -q -m "not slow" $(OLDEST_SKIP) $(OLDEST_TESTS)

lint: setup  ## ruff's checks and its formatting (`ruff format src tests bench` applies it)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: setup  ## layer benchmark; needs a CUDA GPU. Without make, from a checkout: PYTHONPATH=src python bench/X.py
	PYTHONPATH=src $(BIN)/python bench/bench_attention.py

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache
