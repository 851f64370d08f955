"""An honest throughput recorder: tokens/s, TFLOP/s, MFU and memory per timing window, per training phase.

The CLI always adds it and configures it through its own argument group (``--throughput.*``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import torch
from lightning.pytorch.callbacks import Callback

from lighthouse.model.context_parallel import context_parallel_size
from lighthouse.model.flops import flops_per_token
from lighthouse.train.device_peak import compute_dtype, peak_flops_per_device
from lighthouse.train.stage import current_phase

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


class ThroughputRecorder(Callback):
    """Tokens/s, TFLOP/s, step time, MFU, peak memory and data-wait share, to TensorBoard (``perf/*``) and
    ``throughput.jsonl`` (one record per window, with its stage and wall-clock time); and the tokens seen so far
    (``train/tokens_seen``, kept in checkpoints so it continues across resumes and stages).

    Not Lightning's ``ThroughputMonitor``: this one knows the phase and counts Lighthouse FLOPs.

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
                corrections in lighthouse.train.device_peak) and reports no MFU where it is unknown (e.g. on CPUs).
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
        # Counted here, not at the batch's end: a checkpoint saved by a callback that ends the batch before this
        # one (lighthouse.train.time_budget's stop) then holds the batch it saves after (it was one batch short).
        self.tokens_seen += batch["tokens"][:, 1:].numel() * (trainer.world_size // context_parallel_size(trainer))
        self._start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end = self._now()
        # Every rank reads a batch of the same shape; with context parallelism cp ranks share each window and
        # each computes the positions of its slice: a device's tokens are its slice, the run's are per window.
        tokens = batch["tokens"][:, 1:].numel() // context_parallel_size(trainer)
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
        phase, attention, _ = current_phase(trainer, pl_module)
        record = {
            "step": trainer.global_step,
            # phase number from 1 (``stage`` for the readers of two-stage runs) and its attention backend
            "stage": phase + 1,
            "attention": attention,
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
