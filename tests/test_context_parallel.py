"""Context parallelism on the CPU (gloo): the all-to-all pair, cp=2 and cp=2 x dp=2 against one process, resume
across cp degrees, and the config errors. Each spawned job checks several cases: processes start slowly here."""

from __future__ import annotations

import functools
import json
import re
import subprocess
from types import SimpleNamespace

import pytest
import torch
import yaml
from context_parallel_workers import launch, train, train_parallel
from training_helpers import cli_subprocess_args, logged_scalars, tiny_config

from lighthouse.model.context_parallel import check_divisible, shard_window

SEQ_LEN, WINDOWS, STEPS = 256, 2, 3
BACKENDS = ("sdpa", "lighthouse_naive")
# fp32 on the CPU: the parallel run sums the same products in another order (slices, gradient all-reduce).
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-4, 1e-6


def assert_same_training(parallel: dict, single: dict, label: str) -> None:
    assert parallel["losses"] == pytest.approx(single["losses"], rel=LOSS_RTOL), label
    for name, grad in single["grads"].items():
        torch.testing.assert_close(
            parallel["grads"][name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m, n=name: f"{label} {n}: {m}"
        )


def test_shard_window_keeps_the_next_target():
    tokens = torch.arange(2 * 9).view(2, 9)  # 8 inputs and their targets
    assert shard_window(tokens, 0, 2).tolist() == [[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]]
    assert shard_window(tokens, 1, 2).tolist() == [[4, 5, 6, 7, 8], [13, 14, 15, 16, 17]]
    with pytest.raises(ValueError, match="3 equal"):
        shard_window(tokens, 0, 3)


def test_throughput_counts_a_window_once_and_a_device_its_slice(tmp_path):
    from test_throughput import fake_run, recorder, step

    # 4 processes as dp=2 x cp=2; 2 steps of 1 s each, the second timed.
    monitor = recorder([0, 1, 1, 2], window=1, skip_steps=1)
    trainer, pl_module, _ = fake_run(tmp_path, world_size=4)
    trainer.strategy = SimpleNamespace(context_parallel_size=2)
    batch = {"tokens": torch.zeros(1, 65, dtype=torch.long)}  # one window of 64 predicted tokens per replica
    monitor.on_train_start(trainer, pl_module)
    for _ in range(2):
        step(monitor, trainer, pl_module, batch)
    record = monitor.records[0]
    assert record["tokens_seen"] == 2 * 2 * 64  # steps x replicas x window
    assert record["tokens_per_sec_per_device"] == 32  # this device's slice per second
    assert record["tokens_per_sec"] == 4 * 32  # = 2 replicas x 64 tokens per second


@pytest.mark.parametrize(
    "heads, kv_heads, seq_len, cp, match",
    [
        (4, 4, 256, 3, r"must divide model.arch.n_heads=4 .*valid values are \[1, 2, 4\]"),
        (4, 1, 256, 2, r"must divide model.arch.n_kv_heads=1 .*valid values are \[1\]"),
        (4, 4, 250, 4, r"must divide data.seq_len=250"),
        (4, 4, 256, 0, r"must be an integer >= 1"),
    ],
    ids=["heads", "kv_heads", "seq_len", "zero"],
)
def test_check_divisible_names_field_and_valid_values(heads, kv_heads, seq_len, cp, match):
    with pytest.raises(ValueError, match=match) as err:
        check_divisible(heads, kv_heads, seq_len, cp)
    assert "trainer.strategy.init_args.context_parallel_size" in str(err.value)


# What the long-context configs turn on: each block recomputed in the backward (so are its all-to-alls), the MLP
# and the loss over chunks of positions (fp32 kept inputs: bf16 rounding would differ at rounding boundaries).
MEMORY = {"activation_checkpointing": True, "mlp_chunk_tokens": 48, "loss_chunk_tokens": 40}


def _jobs(world: int) -> list[dict]:
    jobs = [dict(attention=a, seq_len=SEQ_LEN, windows=WINDOWS, steps=STEPS) for a in BACKENDS]
    if world == 2:
        jobs.append(dict(attention="lighthouse_naive", seq_len=SEQ_LEN, windows=WINDOWS, steps=STEPS, memory=MEMORY))
    return jobs


@functools.cache
def _one_process(attention: str, memory: bool) -> dict:
    return train(attention=attention, seq_len=SEQ_LEN, windows=WINDOWS, steps=STEPS, memory=MEMORY if memory else None)


@pytest.mark.slow
@pytest.mark.parametrize("world, cp", [(2, 2), (4, 2)], ids=["cp2", "cp2xdp2"])
def test_context_parallel_training_matches_one_process(tmp_path, world, cp):
    # cp2 also checks the all-to-all pair bit for bit, forward and backward (workers.exchange), in the same spawn.
    out = tmp_path / "parallel.pt"
    launch(train_parallel, world, tmp_path, cp, _jobs(world), str(out))
    results = torch.load(out, weights_only=True)
    for job, parallel in zip(_jobs(world), results, strict=True):
        single = _one_process(job["attention"], "memory" in job)
        assert_same_training(parallel, single, f"{job['attention']} {job.get('memory', '')} world={world} cp={cp}")


# ---------------------------------------------------------------- the real entry point (LightningCLI, 2 processes)

CP2 = ["--trainer.strategy", "lighthouse.train.distributed.ContextParallelStrategy"]
CP2 += ["--trainer.strategy.context_parallel_size", "2", "--trainer.devices", "2"]


def run_cli(folder, config, tag, extra):
    cmd, env = cli_subprocess_args(folder, config, tag, extra)
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cli_cp2_matches_one_process_and_resumes_across_cp(tmp_path):
    # Layer 0 is sdpa, layers 1-2 lighthouse_naive (tiny_config): both backends run through the exchange.
    config = tiny_config(tmp_path, "run", max_steps=4, every_n=2)
    config["data"]["batch_size"] = 2  # per data-parallel replica: with cp=2 on 2 processes, the same 2 windows
    runs = {"one": ["--trainer.devices", "1"], "cp2": CP2}
    for name, extra in runs.items():
        config["trainer"]["logger"]["init_args"]["name"] = name
        result = run_cli(tmp_path, config, name, extra)
        assert result.returncode == 0, result.stderr[-4000:]
    losses = {name: logged_scalars(tmp_path / "logs" / name, "train/loss") for name in runs}
    assert sorted(losses["one"]) == sorted(losses["cp2"]) == [1, 2, 3, 4]
    for step, loss in losses["one"].items():  # fp32; only the order of sums differs
        assert losses["cp2"][step] == pytest.approx(loss, rel=1e-5), step
    for tag in ("train/grad_norm", "val/loss"):
        one, cp2 = (logged_scalars(tmp_path / "logs" / name, tag) for name in runs)
        assert cp2 == pytest.approx(one, rel=1e-5), tag
    records = [json.loads(line) for line in (tmp_path / "logs" / "cp2" / "throughput.jsonl").read_text().splitlines()]
    # Both processes share each window: the run counts it once, a device its half.
    assert records[0]["tokens_seen"] == 4 * 2 * 512
    assert records[0]["tokens_per_sec"] == pytest.approx(2 * records[0]["tokens_per_sec_per_device"])

    # Resume the step-2 checkpoint of each at the other cp: the same next losses as the uninterrupted run.
    for source, name, extra in (("cp2", "cp2_to_1", runs["one"]), ("one", "one_to_cp2", CP2)):
        config["trainer"]["logger"]["init_args"]["name"] = name
        ckpt = tmp_path / "logs" / source / "checkpoints" / "step000002.ckpt"
        result = run_cli(tmp_path, config, name, [*extra, "--ckpt_path", str(ckpt)])
        assert result.returncode == 0, result.stderr[-4000:]
        resumed = logged_scalars(tmp_path / "logs" / name, "train/loss")
        assert sorted(resumed) == [3, 4], name
        for step in (3, 4):
            assert resumed[step] == pytest.approx(losses["one"][step], rel=1e-5), (name, step)


@pytest.mark.parametrize(
    "arch, devices, cp, match",
    [
        ({"n_heads": 4, "n_kv_heads": 2}, 4, 4, r"must divide model.arch.n_kv_heads=2 .*valid values are \[1, 2\]"),
        ({}, 3, 2, r"must divide the number of processes \(3 .*valid values are \[1, 3\]"),
    ],
    ids=["kv_heads", "processes"],
)
def test_cli_refuses_a_cp_the_run_cannot_use(tmp_path, arch, devices, cp, match, capsys, monkeypatch):
    from lighthouse.train.cli import run

    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    config = tiny_config(tmp_path, "bad", max_steps=1)
    config["model"]["arch"].update(arch)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    extra = ["--trainer.strategy", "lighthouse.train.distributed.ContextParallelStrategy"]
    extra += ["--trainer.strategy.context_parallel_size", str(cp), "--trainer.devices", str(devices)]
    # In this process: the check runs once the trainer exists, before fit starts any other process. Exit 2 is
    # exits.run's user-error path, the message without a traceback (tests/test_exits.py covers that path).
    assert run(["fit", "--config", str(tmp_path / "bad.yaml"), *extra]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: trainer.strategy.init_args.context_parallel_size=\d+ " + match, err), err[-4000:]
