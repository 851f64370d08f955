"""Set-up shared by every test: Triton's interpreter on CPU-only machines, the `gpu` marker, NaN-poisoned outputs.

Markers (declared in pyproject.toml):
    gpu   needs a CUDA device; skipped automatically where there is none (one marker is enough).
    slow  takes more than a few seconds on a 2-core CPU; `make test-fast` leaves these out.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Set here, before any test module is imported: @triton.jit reads it when a kernel module is first
    # imported, and the Lighthouse kernels refuse CPU tensors unless they run in the interpreter. An explicit
    # TRITON_INTERPRET from the caller wins.
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Launch options a kernel call may pass besides the kernel's own parameters.
LAUNCH_OPTIONS = frozenset({"num_warps", "num_stages", "num_ctas", "maxnreg"})


def _strict_interpreter_launches() -> None:
    """A compiled launch refuses a keyword the kernel does not declare (KeyError); Triton's interpreter drops it
    without a word. So a wrong keyword passed every CPU test and failed at the first GPU launch (the causal
    selection's placement kernel, 2026-12-03). Here the interpreter refuses it too."""
    try:
        from triton.runtime.interpreter import GridExecutor
    except ImportError:  # no Triton: nothing launches kernels
        return
    launch = GridExecutor.__call__

    def strict_launch(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(self.arg_names) - LAUNCH_OPTIONS)
        if unknown:
            raise KeyError(f"{self.fn.__name__} has no parameter {', '.join(unknown)} (a compiled launch refuses it)")
        return launch(self, *args, **kwargs)

    GridExecutor.__call__ = strict_launch


if os.environ.get("TRITON_INTERPRET") == "1":
    _strict_interpreter_launches()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


POISON_INT = -12345


@pytest.fixture
def poisoned_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``torch.empty`` during the test starts as NaN (floats) or ``POISON_INT`` (integers), so an output
    element a kernel never writes fails the comparison loudly instead of passing by luck."""
    original = torch.empty

    def empty(*args, **kwargs):
        out = original(*args, **kwargs)
        return out.fill_(float("nan") if out.is_floating_point() else POISON_INT)

    monkeypatch.setattr(torch, "empty", empty)
