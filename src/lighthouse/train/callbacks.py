"""Training callbacks: the Lighthouse -> dense stage switch, and an honest throughput recorder.

The CLI always adds both and configures each through its own argument group (``--stage.*``, ``--throughput.*``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lighthouse.model.attention import INNER_ATTENTION
from lighthouse.model.context_parallel import context_parallel_size
from lighthouse.model.flops import compute_dtype, flops_per_token, peak_flops_per_device
from lighthouse.train.logger import write_note


class StageSwitch(Callback):
    """Owns the training stage: 1 = Lighthouse pre-training, 2 = dense recovery (README, "Two-stage training").

    One job: set ``stage.switch_step`` and the switch happens once, at that global step. Two jobs: the recovery
    config resumes a stage-1 checkpoint with ``switch_step`` at or below the resumed step (0 is simplest),
    so the switch happens at the first step of the new job. The stage is stored in checkpoints under a
    fixed key, so resuming either flow keeps it. Logged as ``train/stage``; the switch also leaves a note.
    """

    def __init__(self, switch_step: int | None = None, stage2_backend: str = "sdpa", rewarmup_steps: int = 0):
        """
        Args:
            switch_step: Global step at which stage 2 starts; None keeps stage 1 for the whole run.
            stage2_backend: Attention backend of the non-dense layers in stage 2 (normally 'sdpa').
            rewarmup_steps: Steps over which the LR ramps linearly back up after the switch (0 = none).
        """
        if switch_step is not None and switch_step < 0:
            raise ValueError(f"stage.switch_step={switch_step} must be >= 0 or null")
        if stage2_backend not in INNER_ATTENTION:
            raise ValueError(f"stage.stage2_backend={stage2_backend!r} is not one of {tuple(INNER_ATTENTION)}")
        if rewarmup_steps < 0:
            raise ValueError(f"stage.rewarmup_steps={rewarmup_steps} must be >= 0")
        self.switch_step, self.stage2_backend, self.rewarmup_steps = switch_step, stage2_backend, rewarmup_steps
        self.stage = 1
        self.switched_at: int | None = None

    @property
    def state_key(self) -> str:
        # Fixed, so a recovery config with other arguments still finds the stage-1 state.
        return "StageSwitch"

    def state_dict(self) -> dict:
        return {"stage": self.stage, "switched_at": self.switched_at}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stage, self.switched_at = state_dict["stage"], state_dict["switched_at"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == 2:  # resumed inside stage 2: the model must run dense again
            pl_module.set_attention_backend(self.stage2_backend)
        self._maybe_switch(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._maybe_switch(trainer, pl_module)
        if self.stage == 2 and self.rewarmup_steps and self.switched_at is not None:
            ramp = min(1.0, (trainer.global_step - self.switched_at + 1) / self.rewarmup_steps)
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    # The scheduler resets the LR from its base every step, so this factor never compounds.
                    group["lr"] *= ramp

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        pl_module.log("train/stage", float(self.stage), prog_bar=True)

    def _maybe_switch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == 1 and self.switch_step is not None and trainer.global_step >= self.switch_step:
            before = pl_module.model.attention_backends
            pl_module.set_attention_backend(self.stage2_backend)
            self.stage, self.switched_at = 2, trainer.global_step
            rank_zero_info(f"stage 2 from step {trainer.global_step}: attention -> {self.stage2_backend}")
            self._mark_switch(trainer, before, pl_module.model.attention_backends)

    def _mark_switch(self, trainer: L.Trainer, before: list[str], after: list[str]) -> None:
        """Show the switch where people look: a note in TensorBoard's text tab, and two points of the stage
        curve on consecutive steps, so it steps from 1 to 2 there whatever the logging interval."""
        step = trainer.global_step  # Lightning logs batch k's values at step k: this batch is the first dense one
        changed = [f"{i}: {a} -> {b}" for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        rewarmup = f", LR re-warm-up over {self.rewarmup_steps} steps" if self.rewarmup_steps else ""
        write_note(
            trainer,
            "train/stage",
            f"**Stage 2 (dense recovery) from step {step}**{rewarmup}. "
            f"Attention per layer: {'; '.join(changed) or 'unchanged'}.",
            step,
        )
        for logger in trainer.loggers:
            if step > 0:
                logger.log_metrics({"train/stage": 1.0}, step=step - 1)
            logger.log_metrics({"train/stage": 2.0}, step=step)


# Record fields that become ``perf/*`` TensorBoard scalars (step, stage, time and tokens_seen are bookkeeping).
PERF_KEYS = (
    "tokens_per_sec",
    "tokens_per_sec_per_device",
    "tflops_per_device",
    "step_time_s",
    "data_wait_share",
    "mfu",
    "mfu_actual",
    "max_memory_gib",
)


def stage_of(trainer: L.Trainer) -> int:
    """The training stage from the run's StageSwitch (1 where there is none)."""
    return next((cb.stage for cb in trainer.callbacks if isinstance(cb, StageSwitch)), 1)


class ThroughputRecorder(Callback):
    """Tokens/s, TFLOP/s, step time, MFU, peak memory and data-wait share, to TensorBoard (``perf/*``) and
    ``throughput.jsonl`` (one record per window, with its stage and wall-clock time); and the tokens seen so far
    (``train/tokens_seen``, kept in checkpoints so it continues across resumes and stages).

    Not Lightning's ``ThroughputMonitor``: this one knows the stage and counts Lighthouse FLOPs.

    Honest timing: the device is synchronised before every clock read; the first ``skip_steps`` steps of a
    job and after a stage switch (compilation, autotuning, allocator warm-up) and any interval that contains
    validation are left out. Averages are taken over ``window`` timed steps.
    """

    clock: Callable[[], float] = staticmethod(time.perf_counter)  # seconds; tests put a fake clock here

    def __init__(self, window: int = 10, skip_steps: int = 3, peak_tflops: float | None = None):
        """
        Args:
            window: Timed steps averaged per logged value (>= 1).
            skip_steps: Steps left out after the start of a job and after a stage switch (>= 0).
            peak_tflops: Peak TFLOP/s of one device for MFU; null looks the GPU up (Lightning's table with
                corrections in lighthouse.model.flops) and reports no MFU where it is unknown (e.g. on CPUs).
        """
        if window < 1:
            raise ValueError(f"throughput.window={window} must be >= 1")
        if skip_steps < 0:
            raise ValueError(f"throughput.skip_steps={skip_steps} must be >= 0")
        if peak_tflops is not None and peak_tflops <= 0:
            raise ValueError(f"throughput.peak_tflops={peak_tflops} must be > 0 or null")
        self.window, self.skip_steps, self.peak_tflops = window, skip_steps, peak_tflops
        self._reset_window()
        self._last_end: float | None = None
        self._skip_left = skip_steps
        self._backends: list[str] | None = None
        self._log_dir: str | None = None
        self._peak: float | None = None
        self.tokens_seen = 0
        self.records: list[dict] = []

    @property
    def state_key(self) -> str:
        return "ThroughputRecorder"  # fixed, like StageSwitch's, so the recovery config finds it

    def state_dict(self) -> dict:
        return {"tokens_seen": self.tokens_seen}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens_seen = int(state_dict.get("tokens_seen", 0))

    def _reset_window(self) -> None:
        self._tokens = 0
        self._busy = 0.0
        self._wait = 0.0
        self._steps = 0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return self.clock()

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_end = None
        self._skip_left = self.skip_steps
        self._log_dir = trainer.log_dir  # a collective in DDP: read it here, where every rank passes
        self._peak = peak_flops_per_device(self.peak_tflops, compute_dtype(trainer.precision))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        backends = pl_module.model.attention_backends
        if backends != self._backends:  # a stage switch: new kernels warm up, start a fresh window
            if self._backends is not None:
                self._skip_left = self.skip_steps
            self._backends = backends
            self._reset_window()
        self._start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end = self._now()
        # Every rank reads a batch of the same shape; with context parallelism cp ranks share each window and
        # each computes the positions of its slice: a device's tokens are its slice, the run's are per window.
        cp = context_parallel_size(trainer)
        window_tokens = batch["tokens"][:, 1:].numel()
        tokens = window_tokens // cp
        self.tokens_seen += window_tokens * (trainer.world_size // cp)
        pl_module.log("train/tokens_seen", float(self.tokens_seen))
        previous, self._last_end = self._last_end, end
        if self._skip_left > 0 or previous is None:
            self._skip_left = max(0, self._skip_left - 1)
            return
        self._tokens += tokens
        self._busy += end - self._start
        self._wait += self._start - previous
        self._steps += 1
        if self._steps >= self.window:
            self._emit(trainer, pl_module, seq_len=batch["tokens"].shape[1] - 1)
            self._reset_window()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last_end = None  # the next interval contains validation: do not time it

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._last_end = None  # nor checkpoint writing

    def _emit(self, trainer, pl_module, seq_len: int) -> None:
        elapsed = self._busy + self._wait
        world = trainer.world_size
        per_device = self._tokens / elapsed
        dense, actual = flops_per_token(pl_module.config, seq_len, self._backends)
        record = {
            "step": trainer.global_step,
            "stage": stage_of(trainer),
            "time": time.time(),  # wall clock (Unix seconds) at the end of the window
            "tokens_seen": self.tokens_seen,
            "tokens_per_sec": per_device * world,
            "tokens_per_sec_per_device": per_device,
            "tflops_per_device": per_device * dense / 1e12,  # dense-equivalent, the same count as mfu
            "step_time_s": elapsed / self._steps,
            "data_wait_share": self._wait / elapsed,
        }
        if self._peak is not None:
            record["mfu"] = per_device * dense / self._peak
            record["mfu_actual"] = per_device * actual / self._peak
        if torch.cuda.is_available():
            record["max_memory_gib"] = torch.cuda.max_memory_reserved() / 2**30
        self.records.append(record)
        for key, value in record.items():
            if key in PERF_KEYS:
                pl_module.log(f"perf/{key}", float(value), prog_bar=key == "tokens_per_sec")
        if trainer.is_global_zero and self._log_dir is not None:
            os.makedirs(self._log_dir, exist_ok=True)
            with open(os.path.join(self._log_dir, "throughput.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
