"""The root conftest's promises: on a CPU-only machine plain `pytest` runs the kernels in Triton's interpreter and
skips `gpu` tests on one marker; `poisoned_empty` makes every new tensor NaN (floats) or a bogus value (ints)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROBE = """
import os

import pytest

SEEN_AT_IMPORT = os.environ.get("TRITON_INTERPRET")


def test_interpreter_was_on_before_this_module_was_imported():
    assert SEEN_AT_IMPORT == "1"


@pytest.mark.gpu
def test_marked_gpu():
    raise AssertionError("a gpu test ran without CUDA")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens without CUDA")
@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_plain_pytest_without_cuda_interprets_kernels_and_skips_gpu_tests(tmp_path: Path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestWarning"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed, 1 skipped" in result.stdout, result.stdout[-3000:]
    assert "needs a CUDA device" in result.stdout


def test_poisoned_empty_fills_every_new_tensor(poisoned_empty):
    assert torch.empty(2, 3).isnan().all()
    assert torch.empty(4, dtype=torch.bfloat16).isnan().all()
    assert torch.equal(torch.empty(5, dtype=torch.int32), torch.full((5,), -12345, dtype=torch.int32))  # POISON_INT
