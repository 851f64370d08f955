"""Data-parallel training on CPU (gloo, 2 processes) through the real entry point."""

import subprocess

import pytest
import yaml
from training_helpers import cli_subprocess_args, logged_scalars, tiny_config


def run_cli(tmp_path, config, extra, tag):
    cmd, env = cli_subprocess_args(tmp_path, config, tag, extra)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


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
