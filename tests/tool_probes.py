"""How the tests of the evaluation commands (recall, lookahead, window_losses) probe their command lines: the one
error line a bad argument gives, through ``exits.run`` (what each command's ``__main__`` runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from training_helpers import REPO

from lighthouse.train import exits


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in a process of its own, as bench/ scripts run the commands (the exit code is the
    outcome; LIGHTHOUSE_DEBUG unset, so errors are the one line a user sees)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("LIGHTHOUSE_DEBUG", None)
    command = [sys.executable, "-m", module, *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def command_error(main, args: list[str], capsys) -> str:
    """The error line of the command ``main`` on ``args``, which must exit 2 without a traceback."""
    capsys.readouterr()
    code = exits.run(main, args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    return err.splitlines()[0]


def error_before_the_checkpoint(main, extra: list[str], tmp_path, capsys, monkeypatch) -> str:
    """The error line for ``--ckpt {tmp}/nope.ckpt --device cpu EXTRA`` (``{tmp}`` in ``extra`` too): the checkpoint
    does not exist, so an error about ``extra`` shows it was checked before the checkpoint was looked for. CUDA is
    hidden and the debug and interpreter switches unset, so a GPU machine answers as a CPU one."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["--ckpt", "{tmp}/nope.ckpt", "--device", "cpu", *extra]
    return command_error(main, [a.format(tmp=tmp_path) for a in args], capsys)


def assert_refused_before_the_checkpoint(main, probe: tuple[list[str], str], tmp_path, capsys, monkeypatch) -> None:
    """``probe`` = (extra arguments, the error message; ``{tmp}`` in either is ``tmp_path``): the command refuses
    them with exactly that message, before it looks for the checkpoint."""
    extra, message = probe
    line = error_before_the_checkpoint(main, extra, tmp_path, capsys, monkeypatch)
    assert line == "error: " + message.format(tmp=tmp_path)


# The probes every evaluation command answers alike (its own are added beside them).
SHARED_BAD_FLAGS = {
    "device-cuda-absent": (
        ["--device", "cuda"],
        "--device='cuda' is invalid: this machine has no CUDA device (use --device cpu)",
    ),
    "device-meta": (
        ["--device", "meta"],
        "--device='meta' is invalid: the tools run on 'cpu', 'cuda' or 'cuda:N' (and 'mps' on a Mac)",
    ),
    "ckpt-missing": ([], "--ckpt {tmp}/nope.ckpt: no such file"),
}


def json_folder_missing(name: str) -> dict:
    """The probe of a ``--json`` output whose folder does not exist (lookahead and recall write one)."""
    return {
        "json-folder-missing": (
            ["--json", f"{{tmp}}/no/such/{name}"],
            f"--json='{{tmp}}/no/such/{name}' is invalid: the folder '{{tmp}}/no/such' does not exist",
        )
    }
