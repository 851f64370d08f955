"""End-to-end training through the real CLI on CPU: learning, resume equality, both two-stage flows."""

import math
import os
import subprocess
import sys

import pytest
import torch
from training_helpers import REPO, fit, logged_scalars, only_run_dir, tiny_config


def stage_switch(cli):
    return next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "StageSwitch")


@pytest.mark.slow
def test_demo_config_fast_dev_run_exits_zero(tmp_path):
    """The README's main job, as shipped, runs one train and one validation batch."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "src/train.py",
        "fit",
        "--config",
        "configs/demo.yaml",
        "--trainer.fast_dev_run=true",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        # Lightning 2.6 still writes save_last's last.ckpt at the end of a fast_dev_run, under default_root_dir
        # (the working directory unless set); keep it out of the repository.
        f"--trainer.default_root_dir={tmp_path}",
    ]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_lighthouse_model_learns(tmp_path):
    config = tiny_config(tmp_path, "learn", max_steps=30, every_n=30)
    fit(tmp_path, config)
    losses = logged_scalars(tmp_path / "logs" / "learn", "train/loss")
    assert len(losses) == 30
    first, last = losses[min(losses)], losses[max(losses)]
    assert first == pytest.approx(math.log(257), abs=0.1)
    assert last < first - 1.0
    assert logged_scalars(tmp_path / "logs" / "learn", "val/loss")
    assert logged_scalars(tmp_path / "logs" / "learn", "perf/tokens_per_sec")


@pytest.mark.slow
def test_resume_gives_identical_losses(tmp_path):
    straight = tiny_config(tmp_path / "a", "straight", max_steps=8)
    fit(tmp_path / "a", straight)
    expected = logged_scalars(tmp_path / "a" / "logs" / "straight", "train/loss")

    first = tiny_config(tmp_path / "b", "resumed", max_steps=4)
    fit(tmp_path / "b", first, tag="first")
    second = tiny_config(tmp_path / "b", "resumed", max_steps=8)
    ckpt = tmp_path / "b" / "logs" / "resumed" / "checkpoints" / "last.ckpt"
    cli = fit(tmp_path / "b", second, ckpt_path=str(ckpt), tag="second")
    assert cli.trainer.global_step == 8
    got = logged_scalars(tmp_path / "b" / "logs" / "resumed", "train/loss")
    assert sorted(got) == sorted(expected) and len(got) == 8
    assert got == expected  # bitwise: same data, same weights, same optimizer state


def test_one_job_switches_exactly_once(tmp_path):
    config = tiny_config(tmp_path, "onejob", max_steps=6, switch_step=3)
    cli = fit(tmp_path, config)
    switch = stage_switch(cli)
    assert (switch.stage, switch.entered) == (2, 3)
    assert cli.model.model.attention_backends == ["sdpa"] * 3
    stages = logged_scalars(tmp_path / "logs" / "onejob", "train/stage")
    # Step k is the k-th optimizer step (lighthouse.train.logger): steps 1-3 train in stage 1, 4-6 in stage 2.
    assert stages == {1: 1, 2: 1, 3: 1, 4: 2, 5: 2, 6: 2}
    losses = logged_scalars(tmp_path / "logs" / "onejob", "train/loss")
    assert all(math.isfinite(v) for v in losses.values())


def test_resume_inside_stage_two_stays_dense(tmp_path):
    config = tiny_config(tmp_path, "stay", max_steps=4, switch_step=2, every_n=2)
    fit(tmp_path, config)
    ckpt = tmp_path / "logs" / "stay" / "checkpoints" / "last.ckpt"
    more = tiny_config(tmp_path, "stay", max_steps=6, switch_step=2, every_n=2)
    cli = fit(tmp_path, more, ckpt_path=str(ckpt), tag="more")
    switch = stage_switch(cli)
    assert (switch.stage, switch.entered) == (2, 2)
    assert cli.model.model.attention_backends == ["sdpa"] * 3


def test_two_job_flow_continues_step_and_optimizer(tmp_path):
    # version=None: each launch places itself as the shipped configs do; the recovery job continues the run dir
    # of the checkpoint it resumes.
    stage1 = tiny_config(tmp_path, "twojob", "demo.yaml", max_steps=4, version=None)
    fit(tmp_path, stage1, tag="stage1")
    run = only_run_dir(tmp_path / "logs" / "twojob")
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4 and saved["callbacks"]["StageSwitch"]["stage"] == 1

    stage2 = tiny_config(
        tmp_path, "twojob", "demo_recover.yaml", max_steps=8, attention="sdpa", switch_step=0, version=None
    )
    stage2["stage"]["min_start_step"] = 4
    cli = fit(tmp_path, stage2, ckpt_path=str(ckpt), tag="stage2")
    assert cli.trainer.global_step == 8
    switch = stage_switch(cli)
    assert (switch.stage, switch.entered) == (2, 4)
    # AdamW counts its own steps: 8 means the stage-1 state was loaded, not restarted.
    optimizer = cli.trainer.optimizers[0]
    assert all(float(optimizer.state[p]["step"]) == 8 for p in cli.model.parameters())
    assert only_run_dir(tmp_path / "logs" / "twojob") == run
    losses = logged_scalars(run, "train/loss")
    assert sorted(losses) == list(range(1, 9))  # one run directory, one continuous curve
    assert (run / "config.yaml").exists()
    assert (run / "config.1.yaml").exists()

    # Stopped inside stage 2 and resumed with the recovery config again: still stage 2, switched at step 4.
    again = tiny_config(
        tmp_path, "twojob", "demo_recover.yaml", max_steps=10, attention="sdpa", switch_step=0, version=None
    )
    again["stage"]["min_start_step"] = 4
    cli = fit(tmp_path, again, ckpt_path="last", tag="again")
    assert (stage_switch(cli).stage, stage_switch(cli).entered, cli.trainer.global_step) == (2, 4, 10)
    assert only_run_dir(tmp_path / "logs" / "twojob") == run


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    config = tiny_config(tmp_path, "fit", max_steps=2, every_n=2)
    fit(tmp_path, config)
    ckpt = tmp_path / "logs" / "fit" / "checkpoints" / "last.ckpt"
    wider = tiny_config(tmp_path, "fit", max_steps=4, every_n=2)
    wider["model"]["arch"]["dim"] = 64
    with pytest.raises(ValueError, match="model.arch.dim: checkpoint 32 vs config 64"):
        fit(tmp_path, wider, ckpt_path=str(ckpt), tag="wider")
