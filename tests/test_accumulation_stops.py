"""Stops and stage changes under gradient accumulation: a stop requested between two micro-batches of one optimizer
step (SIGTERM, Ctrl-C, a TimeBudget) waits for that step, so the resumed run continues exactly; the LR re-warm-up
scales each optimizer step once; a TimeBudget's stop checkpoint counts the tokens of the step it saves."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from training_helpers import fit, logged_scalars, tiny_config

from lighthouse.train.preflight import accumulation_notes

TAGS = ("train/loss", "train/grad_norm", "train/lr", "train/tokens_seen")
STEPS = 6


def config(tmp_path, name: str, accumulate: int, callbacks: list[dict] = (), **overrides) -> dict:
    config = tiny_config(tmp_path, name, max_steps=STEPS, every_n=4, **overrides)
    config["trainer"]["accumulate_grad_batches"] = accumulate
    config["trainer"]["callbacks"] += list(callbacks)
    return config


def curves(tmp_path, name: str) -> dict[str, dict[int, float]]:
    return {tag: logged_scalars(tmp_path / "logs" / name, tag) for tag in TAGS}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: 6 optimizer steps of 2 micro-batches each."""
    folder = tmp_path_factory.mktemp("straight")
    fit(folder, config(folder, "run", accumulate=2))
    return curves(folder, "run")


def stopped_by_a_signal_then_resumed(tmp_path, stopper: dict) -> tuple[int, dict]:
    """Run with ``stopper`` until its signal stops the run, resume with ``--ckpt_path last``; the step the stop
    saved and the curves of both launches together."""
    with pytest.raises(SIGTERMException):  # how a signal's stop ends fit (lighthouse.train.exits: exit 143 / 130)
        fit(tmp_path, config(tmp_path, "run", accumulate=2, callbacks=[stopper]), tag="first")
    step = torch.load(tmp_path / "logs" / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    fit(tmp_path, config(tmp_path, "run", accumulate=2), ckpt_path="last", tag="second")
    return step, curves(tmp_path, "run")


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGINT"])
def test_a_signal_inside_an_accumulation_stops_after_its_step(tmp_path, straight, signal):
    """Micro-batch 5 is the first half of step 3. Before, step 2 was saved with the stream past micro-batch 5: the
    resumed step 3 had half its gradient (grad norm 0.76 against 1.52) and every loss after it differed."""
    stopper = {"class_path": "plugins.SignalAfterBatch", "init_args": {"at": 5, "signal": signal}}
    step, got = stopped_by_a_signal_then_resumed(tmp_path, stopper)
    assert step == 3
    assert got == straight


def test_a_time_budget_inside_an_accumulation_stops_after_its_step(tmp_path, straight):
    budget = {"class_path": "lighthouse.train.time_budget.TimeBudget", "init_args": {"deadline": 1e18, "reserve_s": 0}}
    deadline = {"class_path": "plugins.DeadlineAfterBatch", "init_args": {"at": 5}}
    fit(tmp_path, config(tmp_path, "run", accumulate=2, callbacks=[deadline, budget]), tag="first")
    saved = sorted((tmp_path / "logs" / "run" / "checkpoints").glob("stop-step*.ckpt"))
    assert [p.name for p in saved] == ["stop-step000003.ckpt"]  # was stop-step000002.ckpt, mid-accumulation
    fit(tmp_path, config(tmp_path, "run", accumulate=2), ckpt_path=str(saved[0]), tag="second")
    assert curves(tmp_path, "run") == straight


def test_a_time_budget_stop_checkpoint_counts_the_tokens_of_its_step(tmp_path):
    """The TimeBudget saves in its on_train_batch_end, which ran before the throughput recorder counted the batch:
    every step after the resume logged tokens_seen one batch (1024 tokens) short."""
    straight = config(tmp_path / "a", "run", accumulate=1)
    fit(tmp_path / "a", straight)
    budget = {"class_path": "lighthouse.train.time_budget.TimeBudget", "init_args": {"deadline": 1e18, "reserve_s": 0}}
    deadline = {"class_path": "plugins.DeadlineAfterBatch", "init_args": {"at": 3}}
    fit(tmp_path / "b", config(tmp_path / "b", "run", accumulate=1, callbacks=[deadline, budget]), tag="first")
    (saved,) = (tmp_path / "b" / "logs" / "run" / "checkpoints").glob("stop-step*.ckpt")
    fit(tmp_path / "b", config(tmp_path / "b", "run", accumulate=1), ckpt_path=str(saved), tag="second")
    assert curves(tmp_path / "b", "run") == curves(tmp_path / "a", "run")


def test_the_lr_rewarmup_scales_each_optimizer_step_once(tmp_path):
    """The LR of each step is the same with 1 or 2 micro-batches per step. Before, the re-warm-up factor was applied
    at every micro-batch: ramp^2 with 2 (step 4: 1.24e-4 where 4.97e-4 was due)."""
    lrs = {}
    for accumulate in (1, 2):
        folder = tmp_path / f"accumulate{accumulate}"
        run = config(folder, "run", accumulate=accumulate, switch_step=3)
        run["stage"]["rewarmup_steps"] = 4
        fit(folder, run)
        lrs[accumulate] = logged_scalars(folder / "logs" / "run", "train/lr")
    assert len(lrs[1]) == STEPS and lrs[2] == pytest.approx(lrs[1], rel=1e-6)


def test_validation_counted_in_micro_batches_is_said_at_the_start():
    """Lightning's val_check_interval counts micro-batches: with accumulation 4, a config validating every 4 steps
    validated every step, unsaid."""
    (note,) = accumulation_notes({"accumulate_grad_batches": 4, "val_check_interval": 4})
    assert note == (
        "note: trainer.val_check_interval=4 counts micro-batches, so with trainer.accumulate_grad_batches=4 validation "
        "runs every optimizer step (max_steps and checkpoint intervals count optimizer steps); set "
        "trainer.val_check_interval=16 to validate every 4 steps"
    )
    assert accumulation_notes({"accumulate_grad_batches": 1, "val_check_interval": 4}) == []
    assert accumulation_notes({"accumulate_grad_batches": 4, "val_check_interval": 0.5}) == []  # a fraction of an epoch
