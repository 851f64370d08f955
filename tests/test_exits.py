"""train.py's exit codes, and user errors as one message without a traceback (LIGHTHOUSE_DEBUG=1 shows it)."""

import subprocess

import pytest
from lightning.pytorch.utilities.exceptions import SIGTERMException
from training_helpers import cli_subprocess_args, tiny_config

from lighthouse.checkpoint.guards import NonFiniteError
from lighthouse.train import exits


def raising(error, after_start: bool = False):
    def fake_main(args):
        if after_start:
            exits.MarkTrainingStarted().on_train_batch_start()
        raise error

    return fake_main


@pytest.mark.parametrize(
    "error, code",
    [
        (ValueError("bad value"), 2),
        (FileNotFoundError("no file"), 2),
        (NonFiniteError("loss is nan"), 1),
        (SIGTERMException(), 143),
    ],
)
def test_exit_code_says_what_happened(error, code, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    assert exits.run(raising(error)) == code
    err = capsys.readouterr().err
    assert (str(error) or "SIGTERM") in err and "Traceback" not in err


def test_crashes_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    with pytest.raises(RuntimeError):
        exits.run(raising(RuntimeError("a real bug")))
    with pytest.raises(ValueError):  # once training has started, a ValueError is a crash too
        exits.run(raising(ValueError("in a step"), after_start=True))
    monkeypatch.setenv("LIGHTHOUSE_DEBUG", "1")
    with pytest.raises(ValueError):
        exits.run(raising(ValueError("bad value")))


@pytest.mark.slow
def test_train_py_prints_a_user_error_without_traceback(tmp_path):
    config = tiny_config(tmp_path, "cli", max_steps=2)
    cmd, env = cli_subprocess_args(tmp_path, config, "cli", extra=["--data.batch_size", "0"])
    env.pop("LIGHTHOUSE_DEBUG", None)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "batch_size=0 is invalid" in result.stderr and "Traceback" not in result.stderr
    debug = subprocess.run(
        cmd, cwd=tmp_path, env={**env, "LIGHTHOUSE_DEBUG": "1"}, capture_output=True, text=True, timeout=300
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "batch_size=0 is invalid" in debug.stderr
