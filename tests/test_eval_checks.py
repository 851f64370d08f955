"""What the evaluation commands refuse or record about the checkpoint they read: a model with nothing to probe, the
training phase of a checkpoint past the stage switch, the --json output, data that is not the run's, flag names.

One tiny CLI run (Lighthouse, dense from step 2) serves every test; variants are copies of its checkpoints with one
record changed (saved without a checksum file, which read_checkpoint accepts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tool_probes import command_error
from trained_models import two_stage_checkpoints

from lighthouse.checkpoint.read import read_checkpoint
from lighthouse.eval.lookahead import main
from lighthouse.eval.passkey_prompts import PasskeyConfig
from lighthouse.eval.val_windows import run_datamodule

PROBE = ["--windows", "2", "--bins", "4", "--device", "cpu", "--backend", "lighthouse_naive"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    """{0: a checkpoint of the Lighthouse phase (step 2), 1: one of the dense recovery phase (step 4)}: the shared
    two-stage run's (tests copy what they change)."""
    shared = two_stage_checkpoints(tmp_path_factory)
    return {0: shared[1], 1: shared[2]}


@pytest.fixture(autouse=True)
def no_debug(monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)  # errors as the one line a user sees


def changed_copy(ckpt: Path, folder: Path, change) -> Path:
    """A copy of ``ckpt`` in ``folder`` after ``change(checkpoint dict)``."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    change(checkpoint)
    path = folder / f"changed-{ckpt.name}"
    torch.save(checkpoint, path)
    return path


def all_dense(checkpoint: dict) -> None:
    checkpoint["lighthouse_model"]["dense_layers"] = [0, 1, 2]


def trained_dense(checkpoint: dict) -> None:
    checkpoint["lighthouse_model"]["attention"] = "sdpa"
    del checkpoint["callbacks"]["StageSwitch"]


@pytest.mark.parametrize("change", [all_dense, trained_dense])
def test_a_model_without_lighthouse_layers_is_refused(change, checkpoints, tmp_path, capsys):
    path = changed_copy(checkpoints[0], tmp_path, change)
    line = command_error(main, ["--ckpt", str(path), *PROBE], capsys)
    assert line.startswith(f"error: --ckpt={str(path)!r} is invalid: its model has no Lighthouse layers (")
    assert line.endswith("every layer is dense, so there is nothing to probe")


def test_the_training_phase_is_recorded_and_a_recovered_checkpoint_warned_about(checkpoints, tmp_path, capsys):
    out = tmp_path / "probe.json"
    main(["--ckpt", str(checkpoints[1]), *PROBE, "--json", str(out)])
    captured = capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["trained_attention"] == "sdpa" and record["training_phase"]["phase"] == 1
    assert "(trained with sdpa, phase 1 from step 2)" in captured.out
    [warning] = captured.err.splitlines()
    assert warning.startswith("warning: this checkpoint is past the stage switch (phase 1, sdpa from step 2)")
    main(["--ckpt", str(checkpoints[0]), *PROBE, "--json", str(out)])
    captured = capsys.readouterr()
    assert json.loads(out.read_text())["trained_attention"] == "lighthouse_naive"
    assert "warning" not in captured.err and "(trained with lighthouse_naive, phase 0 from step 0)" in captured.out


def test_a_blank_json_or_the_checkpoint_itself_is_refused(checkpoints, capsys):
    ckpt = str(checkpoints[0])
    line = command_error(main, ["--ckpt", ckpt, *PROBE, "--json", ""], capsys)
    assert line == "error: --json='' is invalid: it must name a file, not be blank (is a shell variable unset?)"
    line = command_error(main, ["--ckpt", ckpt, *PROBE, "--json", ckpt], capsys)
    assert line == f"error: --json={ckpt!r} is invalid: it is the file this command reads; name another"


def other_fingerprint(what: str):
    def change(checkpoint: dict) -> None:
        checkpoint["LMDataModule"][f"{what}_fingerprint"] = "0123456789abcdef"

    return change


@pytest.mark.parametrize("what", ["tokenizer", "data"])
def test_data_that_is_not_the_runs_is_refused(what, checkpoints, tmp_path, capsys):
    path = changed_copy(checkpoints[0], tmp_path, other_fingerprint(what))
    line = command_error(main, ["--ckpt", str(path), *PROBE], capsys)
    assert line.startswith(
        f"error: --ckpt={str(path)!r} is invalid: the {what} fingerprint differs from the checkpoint's "
        "(--ckpt records '0123456789abcdef', the data settings give '"
    )


def test_a_checkpoint_without_the_record_still_reads(checkpoints):
    checkpoint = read_checkpoint(checkpoints[0])
    del checkpoint["LMDataModule"]
    assert run_datamodule(checkpoint).settings.seq_len == 512


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("key_digits", 0, "--key-digits"), ("batch_tokens", 0, "--batch-tokens"), ("samples", 0, "--samples")],
)
def test_passkey_errors_name_the_flag_as_spelled(field, value, flag):
    with pytest.raises(ValueError, match=f"^{flag}={value} must be"):
        PasskeyConfig(**{field: value}).validate(512, prefix="--")
    with pytest.raises(ValueError, match=f"^model.passkey.{field}={value} must be"):
        PasskeyConfig(**{field: value}).validate(512)
