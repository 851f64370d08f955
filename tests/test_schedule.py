"""Stages as a schedule: phases (start step, attention) through the real CLI, resume inside every phase, the
phase record in checkpoints, the LR clock of a rescaled phase, and configs that must continue a run."""

from __future__ import annotations

import math

import pytest
import torch
from training_helpers import fit, logged_scalars, tiny_config

from lighthouse.checkpoint.read import NotRecoveredWarning, training_phase
from lighthouse.train.lit_module import LitLM, lr_multiplier
from lighthouse.train.schedule import Phase, check_phases, lr_clock, phase_index, resolve_phases
from lighthouse.train.stage import StageSwitch

THREE = [
    {"start": 0, "attention": "sdpa"},
    {"start": 3, "attention": "lighthouse_naive"},
    {"start": 6, "attention": "sdpa"},
]
SPARSE = ["sdpa", "lighthouse_naive", "lighthouse_naive"]  # tiny_arch: layer 0 always dense
DENSE = ["sdpa"] * 3


def scheduled(tmp_path, name: str, max_steps: int, schedule=THREE, every_n: int = 3, attention: str = "sdpa"):
    config = tiny_config(tmp_path, name, max_steps=max_steps, every_n=every_n, attention=attention)
    config["stage"]["schedule"] = schedule
    config["trainer"]["callbacks"].append({"class_path": "plugins.RecordBackends"})
    config["trainer"]["callbacks"].append({"class_path": "plugins.RecordGuardHistory"})
    config["trainer"]["limit_val_batches"] = 0
    return config


def plugin(cli, name: str):
    return next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == name)


def recorded(cli) -> dict[int, list[str]]:
    return plugin(cli, "RecordBackends").backends


# ---- the schedule as data ------------------------------------------------------------------------------------
def test_phase_of_a_step_is_the_last_started():
    phases = [Phase(0, "sdpa"), Phase(3, "lighthouse"), Phase(3, "sdpa"), Phase(7, "lighthouse")]
    assert [phase_index(phases, s) for s in range(9)] == [0, 0, 0, 2, 2, 2, 2, 3, 3]


@pytest.mark.parametrize(
    "phases, message",
    [
        ([], "stage.schedule is empty"),
        ([Phase(1, "sdpa")], r"stage.schedule\[0\].start=1 must be 0"),
        ([Phase(0, "sdpa"), Phase(5, "lighthouse"), Phase(4, "sdpa")], r"stage.schedule\[2\].start=4 comes before"),
        ([Phase(0, "flash")], r"stage.schedule\[0\].attention='flash' is not one of"),
        ([Phase(-1, "sdpa")], r"stage.schedule\[0\].start=-1 must be an integer >= 0"),
    ],
)
def test_bad_schedules_are_refused_naming_the_phase(phases, message):
    with pytest.raises(ValueError, match=message):
        check_phases(phases)


def test_switch_step_is_the_two_phase_shorthand_and_excludes_a_schedule():
    assert resolve_phases(None, 10, "lighthouse", "sdpa") == [Phase(0, "lighthouse"), Phase(10, "sdpa")]
    assert resolve_phases(None, None, "lighthouse", "sdpa") == [Phase(0, "lighthouse")]
    with pytest.raises(ValueError, match="stage.switch_step=10 and stage.schedule are both set"):
        StageSwitch(switch_step=10, schedule=THREE)


def test_rescaled_phase_is_continuous_and_anneals_at_the_run_end():
    """An equal-time arm: branches at 200 off a 1000-step schedule and ends at 500, fully annealed."""
    phases = [Phase(0, "sdpa"), Phase(200, "sdpa", rescale_lr=True)]
    clock = [lr_clock(phases, s, 1000, 500) for s in range(501)]
    assert clock[:201] == [float(s) for s in range(201)]  # unchanged up to the branch: continuous there
    assert clock[500] == pytest.approx(1000.0)  # the whole schedule's end at the arm's last step
    assert all(b > a for a, b in zip(clock[200:], clock[201:], strict=False))
    lr = [lr_multiplier(c, 100, 1000, "cosine", 0.1) for c in clock]
    assert lr[500] == pytest.approx(0.1) and lr[199] == pytest.approx(lr_multiplier(199, 100, 1000, "cosine", 0.1))
    # A later phase without rescale keeps the rescaled clock (a Lighthouse middle then dense, in half the steps).
    phases = [Phase(0, "sdpa"), Phase(200, "lighthouse", rescale_lr=True), Phase(300, "sdpa")]
    assert lr_clock(phases, 500, 1000, 500) == pytest.approx(1000.0)


# ---- through the CLI -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_three_phases_switch_at_the_named_steps_and_resume_exactly_inside_each(tmp_path):
    straight = fit(tmp_path / "straight", scheduled(tmp_path / "straight", "three", 9))
    assert recorded(straight) == {s: [DENSE, SPARSE, DENSE][s // 3] for s in range(9)}
    # Each change of attention starts the divergence guard's references afresh (its history counts from 1 again).
    assert plugin(straight, "RecordGuardHistory").seen == {s: s % 3 + 1 for s in range(9)}
    stages = logged_scalars(tmp_path / "straight" / "logs" / "three", "train/stage")
    assert [stages[s] for s in range(1, 10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # step s: the s-th optimizer step
    expected = logged_scalars(tmp_path / "straight" / "logs" / "three", "train/loss")
    assert len(expected) == 9 and all(math.isfinite(v) for v in expected.values())

    for stop in (2, 3, 4, 7):  # inside phase 1, at the first step of phase 2, inside phases 2 and 3
        folder = tmp_path / f"stop{stop}"
        fit(folder, scheduled(folder, "three", stop), tag="first")
        ckpt = folder / "logs" / "three" / "checkpoints" / "last.ckpt"
        phase = training_phase(torch.load(ckpt, map_location="cpu", weights_only=True))
        last = (stop - 1) // 3  # the phase of the last step the first launch trained
        assert (phase["phase"], phase["attention"]) == (last, THREE[last]["attention"])
        cli = fit(folder, scheduled(folder, "three", 9), ckpt_path=str(ckpt), tag="second")
        assert recorded(cli) == {s: [DENSE, SPARSE, DENSE][s // 3] for s in range(stop, 9)}
        got = logged_scalars(folder / "logs" / "three", "train/loss")
        assert got == expected, stop  # bitwise: the phase, the LR and the data stream all continue


@pytest.mark.slow
def test_dense_checkpoint_resumes_into_a_lighthouse_phase_without_overrides(tmp_path):
    dense = scheduled(tmp_path, "branch", 4, schedule=[{"start": 0, "attention": "sdpa"}])
    fit(tmp_path, dense, tag="dense")
    ckpt = tmp_path / "logs" / "branch" / "checkpoints" / "last.ckpt"
    branch = scheduled(tmp_path, "branch", 7, schedule=THREE[:2] + [{"start": 6, "attention": "sdpa"}])
    branch["stage"]["schedule"][1]["start"] = 4
    cli = fit(tmp_path, branch, ckpt_path=str(ckpt), tag="branch")
    assert recorded(cli) == {4: SPARSE, 5: SPARSE, 6: DENSE}
    notes = (tmp_path / "logs" / "branch").glob("events.out.tfevents.*")
    assert any(b"Phase 2 of 3 (Lighthouse) from step 4" in f.read_bytes() for f in notes)


@pytest.mark.slow
def test_load_from_checkpoint_gives_a_dense_model_for_inference(tmp_path):
    config = tiny_config(tmp_path, "load", max_steps=2, every_n=2)  # Lighthouse for the whole run
    config["trainer"]["limit_val_batches"] = 0
    fit(tmp_path, config)
    ckpt = tmp_path / "logs" / "load" / "checkpoints" / "last.ckpt"
    with pytest.warns(NotRecoveredWarning):
        module = LitLM.load_from_checkpoint(ckpt)
    assert module.model.attention_backends == DENSE
    logits = module.model(torch.randint(0, 257, (1, 9)))  # a short prompt: Lighthouse would refuse 9 tokens
    assert logits.shape[:2] == (1, 9)


@pytest.mark.slow
def test_recovery_config_refuses_to_start_from_scratch(tmp_path):
    config = tiny_config(tmp_path, "recover", "demo_recover.yaml", max_steps=4, attention="sdpa", switch_step=0)
    assert config["stage"]["min_start_step"] == 150  # as shipped
    with pytest.raises(
        ValueError, match="stage.min_start_step=150: .* no checkpoint was found, so training would start"
    ):
        fit(tmp_path, config, ckpt_path="last")
    assert not logged_scalars(tmp_path / "logs" / "recover", "train/loss")


def stage_settings_unused_at(max_steps: int, **settings) -> list[str]:
    switch = StageSwitch(**settings)
    switch.phases = resolve_phases(switch.schedule, switch.switch_step, "lighthouse_naive", switch.stage2_backend)
    return switch.unused_settings(max_steps)


def test_stage_settings_this_launch_cannot_use_are_named_at_its_start():
    """A switch past max_steps, a re-warm-up with one phase, a stage2_backend without switch_step: each was
    accepted and did nothing, silently (a later launch may raise max_steps, so these are notes, not errors)."""
    (late,) = stage_settings_unused_at(5, switch_step=100)
    assert "phase from step 100 (attention sdpa) starts at or after trainer.max_steps=5" in late
    assert stage_settings_unused_at(100, switch_step=100) != [] and stage_settings_unused_at(101, switch_step=100) == []
    assert len(stage_settings_unused_at(5, schedule=THREE)) == 1  # phase 3 (step 6) only
    (rewarmup,) = stage_settings_unused_at(10, rewarmup_steps=50)
    assert "stage.rewarmup_steps=50 does nothing: the run has one phase" in rewarmup
    assert stage_settings_unused_at(10, switch_step=5, rewarmup_steps=50) == []
    (backend,) = stage_settings_unused_at(10, stage2_backend="lighthouse_naive")
    assert "stage.stage2_backend='lighthouse_naive' does nothing without stage.switch_step" in backend
    assert stage_settings_unused_at(-1, switch_step=100) == []  # no max_steps: every phase can be reached
