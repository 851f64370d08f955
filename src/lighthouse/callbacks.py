"""Training callbacks: the Lighthouse -> dense stage switch, and an honest throughput recorder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from lighthouse.attention import INNER_ATTENTION
from lighthouse.flops import flops_per_token, peak_flops_per_device


class StageSwitch(Callback):
    """Owns the training stage: 1 = Lighthouse pre-training, 2 = dense recovery (spec §9).

    One job: set ``switch_step`` and the switch happens once, at that global step. Two jobs: the recovery
    config resumes a stage-1 checkpoint with ``switch_step`` at or below the resumed step (0 is simplest),
    so the switch happens at the first step of the new job. The stage is stored in checkpoints under a
    fixed key, so resuming either flow keeps it.
    """

    def __init__(self, switch_step: int | None = None, stage2_backend: str = "sdpa", rewarmup_steps: int = 0):
        """
        Args:
            switch_step: Global step at which stage 2 starts; None keeps stage 1 for the whole run.
            stage2_backend: Attention backend of the non-dense layers in stage 2 (normally 'sdpa').
            rewarmup_steps: Steps over which the LR ramps linearly back up after the switch (0 = none).
        """
        if switch_step is not None and switch_step < 0:
            raise ValueError(f"StageSwitch.switch_step={switch_step} must be >= 0 or null")
        if stage2_backend not in INNER_ATTENTION:
            raise ValueError(f"StageSwitch.stage2_backend={stage2_backend!r} is not one of {tuple(INNER_ATTENTION)}")
        if rewarmup_steps < 0:
            raise ValueError(f"StageSwitch.rewarmup_steps={rewarmup_steps} must be >= 0")
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
        pl_module.log("stage", float(self.stage), prog_bar=True)

    def _maybe_switch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == 1 and self.switch_step is not None and trainer.global_step >= self.switch_step:
            pl_module.set_attention_backend(self.stage2_backend)
            self.stage, self.switched_at = 2, trainer.global_step
            rank_zero_info(f"stage 2 from step {trainer.global_step}: attention -> {self.stage2_backend}")


class ThroughputRecorder(Callback):
    """Tokens/s, step time, MFU, peak memory and data-wait share, to TensorBoard and ``throughput.jsonl``.

    Not Lightning's ``ThroughputMonitor``: this one knows the stage and counts Lighthouse FLOPs.

    Honest timing: the device is synchronised before every clock read; the first ``skip_steps`` steps of a
    job and after a stage switch (compilation, autotuning, allocator warm-up) and any interval that contains
    validation are left out. Averages are taken over ``window`` timed steps.
    """

    def __init__(self, window: int = 10, skip_steps: int = 3, peak_tflops: float | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        """
        Args:
            window: Timed steps averaged per logged value.
            skip_steps: Steps left out after the start of a job and after a stage switch.
            peak_tflops: Peak bf16 TFLOP/s of one device for MFU; None detects H100/H200/A100 and skips others.
            clock: Time source (seconds); tests inject a fake one.
        """
        if window < 1 or skip_steps < 0:
            raise ValueError(f"ThroughputRecorder: window={window} must be >= 1 and skip_steps={skip_steps} >= 0")
        self.window, self.skip_steps, self.peak_tflops, self.clock = window, skip_steps, peak_tflops, clock
        self._reset_window()
        self._last_end: float | None = None
        self._skip_left = skip_steps
        self._backends: list[str] | None = None
        self._log_dir: str | None = None
        self.records: list[dict] = []

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
        tokens = batch["tokens"][:, 1:].numel()
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
        record = {
            "step": trainer.global_step,
            "tokens_per_sec": per_device * world,
            "tokens_per_sec_per_device": per_device,
            "step_time_s": elapsed / self._steps,
            "data_wait_share": self._wait / elapsed,
        }
        dense, actual = flops_per_token(pl_module.config, seq_len, self._backends)
        peak = peak_flops_per_device(self.peak_tflops)
        if peak is not None:
            record["mfu"] = per_device * dense / peak
            record["mfu_actual"] = per_device * actual / peak
        if torch.cuda.is_available():
            record["max_memory_gib"] = torch.cuda.max_memory_reserved() / 2**30
        self.records.append(record)
        for key, value in record.items():
            if key != "step":
                pl_module.log(f"perf/{key}", float(value), prog_bar=key == "tokens_per_sec")
        if trainer.is_global_zero and self._log_dir is not None:
            os.makedirs(self._log_dir, exist_ok=True)
            with open(os.path.join(self._log_dir, "throughput.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
