"""Finite blow-ups stop training like NaN does: a loss or gradient norm far above its recent median, or a weight
norm that jumps between saves, and the message names the newest checkpoint saved before the trouble began."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from training_helpers import cli_subprocess_args, tiny_config

from lighthouse.checkpoint.guards import NORM_STRIKES, WARMUP_STEPS, WINDOW, DivergenceError, StepGuard
from lighthouse.train import exits
from lighthouse.train.cli import main as cli_main


def fake_trainer(folder: Path | None):
    strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=lambda t, reduce_op: t)
    return SimpleNamespace(strategy=strategy, checkpoint_callback=SimpleNamespace(dirpath=folder), global_step=0)


def save_step(folder: Path, step: int) -> None:
    path = folder / f"step{step:06d}.ckpt"
    torch.save({"global_step": step, "state_dict": {}}, path)
    os.utime(path, ns=(step * 10**9, step * 10**9))  # written in step order


def feed(guard: StepGuard, trainer, losses, norms=None) -> None:
    for i, loss in enumerate(losses):
        trainer.global_step = i
        guard.observe(torch.tensor(loss))
        guard.check(trainer, None if norms is None else torch.tensor(norms[i]))


def test_a_climbing_loss_stops_at_ten_times_the_median_and_names_the_checkpoint_before_the_climb(tmp_path):
    for step in range(0, 31, 5):
        save_step(tmp_path, step)
    trainer = fake_trainer(tmp_path)
    steady = [2.0, 2.1] * 12  # steps 0..23; the median (with the climb) is 2.1, last reached at step 23
    guard = StepGuard(10.0, uniform_loss=5.5)
    with pytest.raises(DivergenceError) as err:
        feed(guard, trainer, [*steady, 3.0, 6.0, 12.0, 19.0, 25.0])
    message = str(err.value)
    assert "global step 28" in message and "model.divergence_factor=10.0" in message
    assert "the climb began after step 23" in message
    assert f"{tmp_path / 'step000020.ckpt'} (step 20)" in message  # not step 25, saved during the climb


def test_a_gradient_norm_that_stays_high_stops_too():
    guard = StepGuard(10.0, uniform_loss=5.5)
    norms = [1.0] * WINDOW + [50.0] * NORM_STRIKES
    expected = f"gradient norm 50 is 50x its median \\(1\\) \\(over the limit {NORM_STRIKES} steps in a row\\)"
    with pytest.raises(DivergenceError, match=expected):
        feed(guard, fake_trainer(None), [2.0] * len(norms), norms)
    assert guard.steps_seen == len(norms)  # it stopped at the last strike, not before


def test_a_lone_gradient_norm_spike_passes_and_strikes_must_be_consecutive():
    """Causal-selection seed 0 of the from-scratch comparison (H200, 2026-12-03): gradient norms near 0.64, one step
    at 7.13 (11.2x) at step 255 with a flat loss; the guard stopped the run there."""
    steady = [0.5, 0.64, 0.8] * 22  # median 0.64 over a full window
    spikes = [7.13, 0.7] * 10 + [7.13] * (NORM_STRIKES - 1) + [0.6] * 5  # never NORM_STRIKES in a row
    norms = [*steady, *spikes]
    feed(StepGuard(10.0, uniform_loss=5.5), fake_trainer(None), [2.3] * len(norms), norms)


def test_an_early_gradient_norm_spike_passes():
    """The warm-up of branch seed 1 (H200, 2026-12-02): gradient norms 27, 1.9, 378, 2.6 at steps 5, 10, 15, 20, then
    a normal run; stopped at step 14 by a median of 13 steps before the norm needed a full window."""
    early = [27.0, 9.0, 4.0, 3.0, 2.5, 2.0, 1.9, 1.9, 2.2, 1.8, 1.9, 2.0, 2.1, 2.0, 378.0, 2.6] + [2.0] * 60
    feed(StepGuard(10.0, uniform_loss=5.5), fake_trainer(None), [3.0] * len(early), early)


def test_after_a_restart_a_new_level_passes_and_a_later_blow_up_still_stops():
    """From-scratch seed 0 of the branch comparison (H200, 2026-12-03): gradient norms near 0.38 through 500
    Lighthouse steps, 7.33 at the first dense step (then 0.5-1.5: a lone spike, which NORM_STRIKES alone now
    passes). A stage switch can also move the norm to a lasting new level; the switch restarts the guard, so the new
    level becomes the reference instead of a stop."""
    norms = [0.3, 0.38, 0.45] * 22  # median 0.38 over a full window
    losses = [1.06] * len(norms)
    switch = [7.33] + [4.5] * (WINDOW - 1)  # over 10x the old median for a whole window
    with pytest.raises(DivergenceError, match="gradient norm 4.5 is 11.8x its median"):
        feed(StepGuard(10.0, uniform_loss=5.5), fake_trainer(None), [*losses, *[3.7] * WINDOW], [*norms, *switch])
    guard, trainer = StepGuard(10.0, uniform_loss=5.5), fake_trainer(None)
    feed(guard, trainer, losses, norms)
    guard.restart()
    assert guard.steps_seen == 0
    feed(guard, trainer, [3.7] * WINDOW, switch)
    with pytest.raises(DivergenceError, match="gradient norm 50"):
        feed(guard, trainer, [3.0] * NORM_STRIKES, [50.0] * NORM_STRIKES)


def test_during_warm_up_the_loss_is_compared_with_a_uniform_guess():
    guard = StepGuard(10.0, uniform_loss=5.5)
    feed(guard, fake_trainer(None), [5.5, 40.0])  # high, but under 10 x ln(vocab)
    with pytest.raises(DivergenceError, match="ln\\(vocab\\)"):
        feed(StepGuard(10.0, uniform_loss=5.5), fake_trainer(None), [5.5, 1e4])
    assert WARMUP_STEPS > 2


def test_healthy_noise_and_a_turned_off_guard_pass():
    noisy = [2.0 + 0.5 * ((i * 7) % 5) for i in range(200)]
    feed(StepGuard(10.0, uniform_loss=5.5), fake_trainer(None), noisy, [1.0 + (i % 9) for i in range(200)])
    feed(StepGuard(None, uniform_loss=5.5), fake_trainer(None), [2.0] * 20 + [1e6])
    with pytest.raises(ValueError, match="divergence_factor=1 must be > 1"):
        StepGuard(1)


def test_lr_1e6_stops_with_no_blown_checkpoint_saved(tmp_path, capsys, monkeypatch):
    """The fault-injection case: every step saved, LR 10^6. Before, the run saved finite checkpoints with
    max|w| ~ 5e5 and named one of them as 'last good'."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, "diverge", max_steps=12, every_n=1)
    cmd, _ = cli_subprocess_args(tmp_path, config, "diverge", ["--model.optimizer.init_args.lr", "1e6"])
    code = exits.run(cli_main, cmd[2:])
    err = capsys.readouterr().err
    assert code == exits.EXIT_STOPPED, err
    assert "diverging" in err and "Traceback" not in err
    for path in (tmp_path / "logs" / "diverge" / "checkpoints").glob("*.ckpt"):
        weights = torch.load(path, weights_only=True)["state_dict"].values()
        assert max(float(w.abs().max()) for w in weights) < 100, path


def test_the_reference_is_the_lower_median_of_the_window():
    losses = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.6, 5.3, 3.5, 8.0, 9.7, 7.9]  # 12 steps: an even count
    assert WARMUP_STEPS < len(losses) < WINDOW
    guard = StepGuard(10.0, uniform_loss=5.5)
    feed(guard, fake_trainer(None), losses, [1.0] * len(losses))
    loss_ref, norm_ref = guard._references(torch.device("cpu")).tolist()
    assert loss_ref == sorted(losses)[len(losses) // 2 - 1] == 4.0  # the lower of the two middle values
    assert math.isnan(norm_ref)  # the norm waits for a full window
    full = StepGuard(10.0, uniform_loss=5.5)
    feed(full, fake_trainer(None), [2.0 + (i % 4) for i in range(WINDOW)], [1.0 + (i % 6) for i in range(WINDOW)])
    assert full._references(torch.device("cpu")).tolist() == full._history.nanmedian(dim=0).values.tolist()


@pytest.mark.gpu
def test_the_guard_runs_under_deterministic_algorithms_on_cuda():
    trainer = fake_trainer(None)
    trainer.strategy.root_device = torch.device("cuda")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:  # nanmedian's indices raised here on CUDA before the reference became a quantile
        feed(
            StepGuard(10.0, uniform_loss=5.5), trainer, [2.0 + (i % 4) for i in range(WINDOW + 5)], [1.0] * (WINDOW + 5)
        )
    finally:
        torch.use_deterministic_algorithms(before)
