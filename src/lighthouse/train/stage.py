"""The StageSwitch callback: runs the phases of lighthouse.train.schedule (README, "Two-stage training").

The CLI always adds it, configured through its own argument group (``--stage.switch_step 10000`` or
``--stage.schedule '[{start: 0, attention: sdpa}, {start: 200, attention: lighthouse}, ...]'``).
"""

from __future__ import annotations

import dataclasses

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lighthouse.model.attention import INNER_ATTENTION
from lighthouse.train.logger import write_note
from lighthouse.train.schedule import Phase, lr_clock, phase_index, phase_record, resolve_phases


def _as_phase(value: Phase | dict) -> Phase:
    return value if isinstance(value, Phase) else Phase(**value)


class StageSwitch(Callback):
    """Owns the training phase: which attention the non-dense layers run at every step, the LR clock, and the one
    phase record in every checkpoint (read back by lighthouse.checkpoint.read.training_phase).

    The phase of a step follows from the step and the schedule of the current config, so a checkpoint resumes
    into whatever phase its step has under that schedule: the recovery config, or a branch of a shared run,
    is a recipe change that is announced, never refused. Logged as ``train/stage`` (the phase number from 1);
    each change of phase leaves a note in TensorBoard's text tab.
    """

    def __init__(
        self,
        switch_step: int | None = None,
        stage2_backend: str = "sdpa",
        rewarmup_steps: int = 0,
        schedule: list[Phase] | None = None,
        min_start_step: int = 0,
    ):
        """
        Args:
            switch_step: Shorthand for two phases: the model's attention (model.arch.attention) from step 0,
                stage2_backend from this global step on. None (and no schedule): one phase for the whole run.
            stage2_backend: Attention backend of the non-dense layers after switch_step (normally 'sdpa').
            rewarmup_steps: Steps over which the LR ramps linearly back up after each change of phase (0 = none).
            schedule: Every phase, in order: ``[{start: 0, attention: sdpa}, {start: 200, attention:
                lighthouse}, {start: 625, attention: sdpa}]``; a phase with ``rescale_lr: true`` fits the rest of
                the LR schedule into its remaining steps (an equal-time arm). Replaces switch_step.
            min_start_step: Lowest global step this config may start at: a recovery config sets its switch step,
                so a launch that finds no checkpoint (step 0) or an earlier one is refused instead of training
                the wrong phase. 0 allows starting from scratch.
        """
        if switch_step is not None and (not isinstance(switch_step, int) or switch_step < 0):
            raise ValueError(f"stage.switch_step={switch_step!r} must be an integer >= 0 or null")
        if stage2_backend not in INNER_ATTENTION:
            raise ValueError(f"stage.stage2_backend={stage2_backend!r} is not one of {tuple(INNER_ATTENTION)}")
        if not isinstance(rewarmup_steps, int) or rewarmup_steps < 0:
            raise ValueError(f"stage.rewarmup_steps={rewarmup_steps!r} must be an integer >= 0")
        if not isinstance(min_start_step, int) or min_start_step < 0:
            raise ValueError(f"stage.min_start_step={min_start_step!r} must be an integer >= 0")
        if schedule is not None:
            schedule = [_as_phase(p) for p in schedule]
            # Checks the phases and refuses both forms at once (the model's own backend is not needed for that).
            resolve_phases(schedule, switch_step, "sdpa", stage2_backend)
        self.switch_step, self.stage2_backend, self.rewarmup_steps = switch_step, stage2_backend, rewarmup_steps
        self.schedule, self.min_start_step = schedule, min_start_step
        self.phases: list[Phase] | None = None  # resolved at setup, when the model's own backend is known
        self.index: int | None = None  # the phase being trained
        self.entered: int | None = None  # the global step at which training entered it (rewarm-up counts from here)
        self._ramped_step: int | None = None  # the optimizer step whose LR the re-warm-up has already scaled
        self._loaded: dict | None = None  # the checkpoint's phase record, when resuming

    # ---- state ----------------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        # Fixed, so a config with other arguments (recovery, a branch) still finds the resumed run's record.
        return "StageSwitch"

    def state_dict(self) -> dict:
        if self.phases is None or self.index is None:
            return {}
        return {**phase_record(self.phases, self.index), "entered": self.entered}

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict) if state_dict else None
        if state and "phase" not in state and "stage" in state:  # a two-stage record of an earlier version
            stage2 = int(state["stage"]) == 2
            state = {
                "phase": int(state["stage"]) - 1,
                "attention": "sdpa" if stage2 else None,
                "entered": state.get("switched_at"),
            }
        self._loaded = state

    @property
    def stage(self) -> int:
        """The phase number from 1 (1 before training starts)."""
        return 1 if self.index is None else self.index + 1

    def check_start(self, step: int, source: str) -> None:
        """Refuse a start below min_start_step (called by the CLI before anything is built); ``source`` says where
        the start step comes from, e.g. "the checkpoint X is at step 4"."""
        if step < self.min_start_step:
            raise ValueError(
                f"stage.min_start_step={self.min_start_step}: this config continues a run from step "
                f"{self.min_start_step} on, but {source}. Pass the checkpoint of the earlier phase with "
                "--ckpt_path (and the run's logger name), or set --stage.min_start_step 0 to train this schedule "
                f"from step {step}"
            )

    # ---- hooks ----------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model_backend = pl_module.config.attention
        self.phases = resolve_phases(self.schedule, self.switch_step, model_backend, self.stage2_backend)
        for i, phase in enumerate(self.phases):
            if phase.sparse:  # the Lighthouse sizes must fit this model and context, checked before any step
                try:
                    dataclasses.replace(pl_module.config, attention=phase.attention)
                except ValueError as error:
                    raise ValueError(f"stage.schedule[{i}] (attention {phase.attention}): {error}") from None
        pl_module.lr_clock = self.lr_position
        if stage == "fit":
            for note in self.unused_settings(trainer.max_steps):
                rank_zero_info(note)

    def unused_settings(self, max_steps: int | None) -> list[str]:
        """What this launch's stage settings will not do, said once at the start instead of left to be found in
        the curves: a phase past max_steps (fine when a later launch raises max_steps, so a notice, not an error),
        a re-warm-up with no change of phase, a stage2_backend with no switch_step to use it."""
        notes = []
        unreached = [p for p in self.phases[1:] if max_steps is not None and 0 < max_steps <= p.start]
        for phase in unreached:
            notes.append(
                f"note: the phase from step {phase.start} (attention {phase.attention}) starts at or after "
                f"trainer.max_steps={max_steps}: this launch ends before it"
            )
        if self.rewarmup_steps and len(self.phases) == 1:
            notes.append(f"note: stage.rewarmup_steps={self.rewarmup_steps} does nothing: the run has one phase")
        if self.switch_step is None and self.schedule is None and self.stage2_backend != "sdpa":
            notes.append(f"note: stage.stage2_backend={self.stage2_backend!r} does nothing without stage.switch_step")
        return notes

    def lr_position(self, step: int, schedule_steps: int, end_step: int | None) -> float:
        if self.phases is None or end_step is None or end_step < 1:
            return float(step)
        return lr_clock(self.phases, step, schedule_steps, end_step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaded = self._loaded
        index = phase_index(self.phases, trainer.global_step)
        if loaded is None:  # a fresh run
            self._enter(trainer, pl_module, index, None)
            return
        # Resumed: the record says what the weights were trained with until now (an earlier version's stage-1
        # record does not name it: then it was this schedule's first phase).
        before = (loaded.get("attention") or self.phases[0].attention, int(loaded.get("phase") or 0))
        if before == (self.phases[index].attention, index):  # the same phase goes on
            self.index, self.entered = index, loaded.get("entered", loaded.get("start"))
            pl_module.set_attention_backend(self.phases[index].attention)
            return
        self._enter(trainer, pl_module, index, before)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        index = phase_index(self.phases, trainer.global_step)
        if index != self.index:
            self._enter(trainer, pl_module, index, (self.phases[self.index].attention, self.index))
        if self.index and self.rewarmup_steps and trainer.global_step != self._ramped_step:
            # Once per optimizer step: the scheduler resets the LR from its base every step, not every micro-batch
            # (under gradient accumulation the factor was applied to itself, ramp^2 with 2 micro-batches).
            self._ramped_step = trainer.global_step
            ramp = min(1.0, (trainer.global_step - self.entered + 1) / self.rewarmup_steps)
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= ramp

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pl_module.log("train/stage", float(self.stage), prog_bar=True)

    # ---- a change of phase ------------------------------------------------------------------------------------
    def _enter(
        self, trainer: L.Trainer, pl_module: L.LightningModule, index: int, before: tuple[str, int] | None
    ) -> None:
        """Start training phase ``index`` at the current step; ``before`` is the attention the weights were
        trained with until now and the index of that phase (None for a fresh run)."""
        phase = self.phases[index]
        pl_module.set_attention_backend(phase.attention)
        self.index, self.entered = index, trainer.global_step
        if before is None:  # the start of a fresh run: nothing changes
            return
        before, before_index = before
        step = trainer.global_step
        if before != phase.attention:  # loss and gradient norm jump to new levels: no blow-up, a new start
            pl_module.step_guard.restart()
        rank_zero_info(
            f"phase {index + 1}/{len(self.phases)} from step {step}: attention {before} -> {phase.attention}"
        )
        model = pl_module.model
        layers = [i for i in range(len(model.attention_backends)) if i not in model.dense_layers]
        change = f"{before} -> {phase.attention}" if before != phase.attention else f"{phase.attention}, unchanged"
        rewarmup = f", LR re-warm-up over {self.rewarmup_steps} steps" if self.rewarmup_steps else ""
        rescale = ", the rest of the LR schedule fitted into the remaining steps" if phase.rescale_lr else ""
        kind = "dense" if not phase.sparse else "Lighthouse"
        write_note(
            trainer,
            "train/stage",
            f"**Phase {index + 1} of {len(self.phases)} ({kind}) from step {step}**{rewarmup}{rescale}. "
            f"Attention of layers {_ranges(layers)}: {change}.",
            step,
        )
        # Two points of the stage curve on consecutive steps, so it steps there whatever the logging interval: step
        # N is the N-th optimizer step (lighthouse.train.logger), so the old phase's last is ``step`` and this
        # batch, the first of the new phase, makes step + 1.
        for logger in trainer.loggers:
            if step > 0:
                logger.log_metrics({"train/stage": float(before_index + 1)}, step=step)
            logger.log_metrics({"train/stage": float(self.stage)}, step=step + 1)


def _ranges(indices: list[int]) -> str:
    """[2, 3, 4, 7] -> "2-4, 7"."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts) or "none"


def current_phase(trainer: L.Trainer, pl_module: L.LightningModule | None = None) -> tuple[int, str, int]:
    """(phase index, attention of the non-dense layers, number of phases) of the run's StageSwitch; a run without
    one is a single phase of the model's own backend."""
    switch = next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, StageSwitch)), None)
    if switch is not None and switch.phases is not None and switch.index is not None:
        return switch.index, switch.phases[switch.index].attention, len(switch.phases)
    module = pl_module if pl_module is not None else getattr(trainer, "lightning_module", None)
    config = getattr(module, "config", None)
    return 0, (config.attention if config is not None else "sdpa"), 1
