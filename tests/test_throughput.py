"""Throughput arithmetic with a fake clock: which intervals are timed, and what is reported."""

import json
import time
from types import SimpleNamespace

import pytest
import torch

from lighthouse.model.config import ModelConfig
from lighthouse.train.schedule import Phase
from lighthouse.train.stage import StageSwitch
from lighthouse.train.throughput import ThroughputRecorder


class FakeClock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def fake_run(tmp_path, world_size=1):
    logged = {}
    config = ModelConfig(
        vocab_size=10,
        dim=8,
        n_layers=1,
        n_heads=2,
        ffn_hidden=16,
        seq_len=4096,
        lighthouse=dict(levels=2, pooling_factor=4, topk=128),
    )
    pl_module = SimpleNamespace(
        config=config,
        model=SimpleNamespace(attention_backends=["sdpa"]),
        log=lambda name, value, **kw: logged.__setitem__(name, value),
    )
    trainer = SimpleNamespace(
        global_step=0,
        world_size=world_size,
        is_global_zero=True,
        log_dir=str(tmp_path),
        precision="32-true",
        callbacks=[StageSwitch(switch_step=None)],
    )
    return trainer, pl_module, logged


def recorder(times, **kwargs) -> ThroughputRecorder:
    monitor = ThroughputRecorder(**kwargs)
    monitor.clock = FakeClock(times)
    return monitor


def step(monitor, trainer, pl_module, batch):
    monitor.on_train_batch_start(trainer, pl_module, batch, 0)
    trainer.global_step += 1  # Lightning steps the optimizer before on_train_batch_end
    monitor.on_train_batch_end(trainer, pl_module, None, batch, 0)


def test_tokens_per_sec_skips_warmup_and_validation(tmp_path):
    # start/end clock reads per step: step 0 is warm-up; steps 1-2 form the first window
    # (busy 1 s + wait 0.5 s each); step 3 follows validation and is dropped; steps 4-5 form the second
    # window with 2 s busy and no wait.
    times = [0, 1, 1.5, 2.5, 3, 4, 10, 11, 11, 13, 13, 15]
    monitor = recorder(times, window=2, skip_steps=1)
    trainer, pl_module, logged = fake_run(tmp_path, world_size=2)
    batch = {"tokens": torch.zeros(4, 17, dtype=torch.long)}  # 4 * 16 = 64 predicted tokens per step
    monitor.on_train_start(trainer, pl_module)
    for _ in range(3):
        step(monitor, trainer, pl_module, batch)
    assert len(monitor.records) == 1
    first = monitor.records[0]
    assert first["tokens_per_sec_per_device"] == 128 / 3.0
    assert first["tokens_per_sec"] == 2 * 128 / 3.0
    assert first["step_time_s"] == 1.5
    assert first["data_wait_share"] == 1.0 / 3.0
    monitor.on_validation_start(trainer, pl_module)
    for _ in range(3):
        step(monitor, trainer, pl_module, batch)
    second = monitor.records[1]
    assert second["tokens_per_sec_per_device"] == 128 / 4.0 and second["data_wait_share"] == 0.0
    assert logged["perf/tokens_per_sec"] == 2 * 128 / 4.0
    lines = [json.loads(x) for x in (tmp_path / "throughput.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert [r["stage"] for r in lines] == [1, 1] and [r["tokens_seen"] for r in lines] == [3 * 128, 6 * 128]
    assert all(abs(r["time"] - time.time()) < 60 for r in lines)  # wall-clock Unix time, not the fake clock


def test_stage_switch_restarts_warmup(tmp_path):
    times = list(range(40))
    monitor = recorder(times, window=1, skip_steps=2)
    trainer, pl_module, _ = fake_run(tmp_path)
    batch = {"tokens": torch.zeros(1, 2049, dtype=torch.long)}
    monitor.on_train_start(trainer, pl_module)
    for _ in range(4):
        step(monitor, trainer, pl_module, batch)
    assert len(monitor.records) == 2  # steps 0-1 skipped
    pl_module.model.attention_backends = ["lighthouse"]
    for _ in range(4):
        step(monitor, trainer, pl_module, batch)
    assert len(monitor.records) == 4  # two more steps skipped after the switch


def test_mfu_from_peak(tmp_path):
    times = [0, 1, 1, 2]
    monitor = recorder(times, window=1, skip_steps=1, peak_tflops=1e-9)  # 1000 FLOP/s
    trainer, pl_module, _ = fake_run(tmp_path)
    batch = {"tokens": torch.zeros(1, 17, dtype=torch.long)}
    monitor.on_train_start(trainer, pl_module)
    step(monitor, trainer, pl_module, batch)
    step(monitor, trainer, pl_module, batch)
    record = monitor.records[0]
    # 16 tokens/s; 6*720 + 6*16*8 = 5088 FLOPs per token (see test_flops.py).
    assert abs(record["mfu"] - 16 * 5088 / 1000) < 1e-9
    assert record["mfu"] == record["mfu_actual"]
    assert record["tflops_per_device"] == 16 * 5088 / 1e12


def test_records_carry_the_stage_and_tokens_seen_survives_a_resume(tmp_path):
    monitor = recorder(list(range(40)), window=1, skip_steps=0)
    trainer, pl_module, logged = fake_run(tmp_path)
    batch = {"tokens": torch.zeros(1, 17, dtype=torch.long)}
    monitor.on_train_start(trainer, pl_module)
    for _ in range(2):  # the first step of a job has no previous end to time from
        step(monitor, trainer, pl_module, batch)
    switch = trainer.callbacks[0]  # the second phase starts: what StageSwitch's own hooks would set
    switch.phases, switch.index = [Phase(0, "lighthouse_naive"), Phase(3, "sdpa")], 1
    step(monitor, trainer, pl_module, batch)
    assert [(r["step"], r["stage"], r["attention"]) for r in monitor.records] == [(2, 1, "sdpa"), (3, 2, "sdpa")]
    assert logged["train/tokens_seen"] == 3 * 16

    resumed = recorder(list(range(40, 80)), window=1, skip_steps=0)
    resumed.load_state_dict(monitor.state_dict())
    resumed.on_train_start(trainer, pl_module)
    for _ in range(2):
        step(resumed, trainer, pl_module, batch)
    assert resumed.records[0]["tokens_seen"] == 5 * 16 and logged["train/tokens_seen"] == 5 * 16


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"window": 0}, "throughput.window=0 must be >= 1"),
        ({"skip_steps": -1}, "throughput.skip_steps=-1 must be >= 0"),
        ({"peak_tflops": 0.0}, "throughput.peak_tflops=0.0 must be > 0"),
    ],
)
def test_bad_settings_name_the_flag(bad, message):
    with pytest.raises(ValueError, match=message):
        ThroughputRecorder(**bad)
