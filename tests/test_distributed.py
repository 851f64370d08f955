"""Data-parallel training on CPU (gloo, 2 processes) through the real entry point."""

import subprocess

import pytest
import torch
import yaml
from training_helpers import cli_subprocess_args, logged_scalars, tiny_config

from lighthouse.checkpoint.files import verify

TWO_PROCESSES = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def run_cli(tmp_path, config, extra, tag, expect: int = 0):
    """Run the CLI in its own process group (a signal to the group reaches its ranks and nothing else)."""
    cmd, env = cli_subprocess_args(tmp_path, config, tag, extra)
    result = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    assert result.returncode == expect, result.stderr[-4000:]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_same_global_batch(tmp_path):
    one = tiny_config(tmp_path / "one", "one", max_steps=6, every_n=6)
    one["data"]["batch_size"] = 2
    run_cli(tmp_path / "one", one, ["--trainer.accelerator", "cpu", "--trainer.devices", "1"], "one")

    two = tiny_config(tmp_path / "two", "two", max_steps=6, every_n=6)
    two["data"]["batch_size"] = 1  # per rank: the global batch is 2 windows, as above
    run_cli(
        tmp_path / "two",
        two,
        ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        "two",
    )

    a = logged_scalars(tmp_path / "one" / "logs" / "one", "train/loss")
    b = logged_scalars(tmp_path / "two" / "logs" / "two", "train/loss")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:  # same windows, same weights; only the order of floating-point sums differs
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-5), step
    records = (tmp_path / "two" / "logs" / "two" / "throughput.jsonl").read_text().splitlines()
    first = yaml.safe_load(records[0])
    assert first["tokens_per_sec"] == pytest.approx(2 * first["tokens_per_sec_per_device"])


def accumulating(folder, callbacks: list[dict] = ()) -> dict:
    config = tiny_config(folder, "run", max_steps=6, every_n=4)
    config["data"]["batch_size"] = 1
    config["trainer"]["accumulate_grad_batches"] = 2
    config["trainer"]["callbacks"] += list(callbacks)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("signal, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_every_rank_inside_an_accumulation_saves_the_whole_step_and_resumes_exactly(tmp_path, signal, code):
    """What SLURM's preemption (and a terminal's Ctrl-C) sends: the signal to every process of the job, here in the
    first half of step 3. Before, the ranks hung in mismatched collectives (Lightning's handler broadcasts on every
    delivery, and each rank stopped after whichever micro-batch it was in) or refused to save ('non-finite values
    held by another rank'), and a scheduler would have killed the job with nothing saved."""
    run_cli(tmp_path / "straight", accumulating(tmp_path / "straight"), TWO_PROCESSES, "straight")
    signaller = {"class_path": "plugins.SignalAfterBatch", "init_args": {"at": 5, "signal": signal, "group": True}}
    folder = tmp_path / "stopped"
    run_cli(folder, accumulating(folder, [signaller]), TWO_PROCESSES, "first", expect=code)
    last = folder / "logs" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3 and verify(last).status == "ok"
    run_cli(folder, accumulating(folder), [*TWO_PROCESSES, "--ckpt_path", "last"], "second")
    for tag in ("train/loss", "train/grad_norm", "train/tokens_seen"):
        assert logged_scalars(folder / "logs" / "run", tag) == logged_scalars(
            tmp_path / "straight" / "logs" / "run", tag
        )
