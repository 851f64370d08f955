# Two entry points for a fresh machine (Python >= 3.10 and pip): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# A GPU box gets PyPI's CUDA build of torch; a CPU box the small CPU build (PyTorch's CPU index, which
# wins on the +cpu local version; where that index is unreachable pip falls back to what it finds).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_INDEX :=
else
TORCH_INDEX := --retries 0 --extra-index-url https://download.pytorch.org/whl/cpu
# No GPU: Triton kernels run in Triton's interpreter so the kernel tests still exercise them.
export TRITON_INTERPRET ?= 1
endif

.PHONY: setup demo test lint bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(TORCH_INDEX) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -e ".[dev,kernels]"
	touch $@

demo: setup  ## the main job: a small Lighthouse LM on the embedded corpus, curves in logs/demo
	$(BIN)/python src/train.py fit --config configs/demo.yaml

test: setup  ## the whole test suite (GPU tests are skipped without CUDA)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

.PHONY: test-fast
test-fast: setup  ## the edit-test loop: every test not marked slow, kernels included (~1.5 min on a 2-core CPU; `test`: ~5.5)
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check src tests bench

bench: setup  ## layer benchmark; needs a CUDA GPU. Without make, from a checkout: PYTHONPATH=src python bench/X.py
	PYTHONPATH=src $(BIN)/python bench/bench_attention.py

clean:
	rm -rf $(VENV) .pytest_cache
