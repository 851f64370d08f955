"""Stop a training job cleanly, with a checkpoint to resume from, before a wall-clock deadline.

For jobs that must fit a fixed time slot (a 10-minute device call, a scheduler's time limit) and continue in the
next one: ``--ckpt_path`` on the checkpoint it leaves continues the run exactly. Unlike Lightning's ``Timer``, the
budget belongs to this process only (Timer restores the time already spent from the checkpoint), and the
deadline is an absolute time, so a launcher can count its own start-up against it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

STOP_CHECKPOINT = "stop-step{step:06d}.ckpt"


class TimeBudget(Callback):
    """Saves ``<checkpoint dir>/stop-stepNNNNNN.ckpt`` and stops once the next step might end past the deadline.

    The next step is predicted to take as long as the last one plus the longest validation seen so far, and
    ``reserve_s`` is kept for writing the checkpoint, the validation Lightning runs when a job stops early, and
    exiting. Stopping is decided on every rank together.
    """

    def __init__(self, deadline: float, reserve_s: float = 60.0, clock: Callable[[], float] = time.time):
        """
        Args:
            deadline: Wall-clock time (seconds since the epoch, as time.time()) by which the process must be done.
            reserve_s: Seconds kept free before the deadline for the checkpoint, a last validation and the exit.
            clock: Time source; tests inject a fake one.
        """
        if reserve_s < 0:
            raise ValueError(f"TimeBudget.reserve_s={reserve_s} must be >= 0")
        self.deadline, self.reserve_s, self.clock = deadline, reserve_s, clock
        self._last_end: float | None = None
        self._step_s = 0.0
        self._val_s = 0.0
        self._val_start = 0.0
        self._step_at_start: int | None = None
        self.stopped_at: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._last_end is None:
            self._last_end = self.clock()
        self._step_at_start = trainer.global_step

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = self.clock()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val_s = max(self._val_s, self.clock() - self._val_start)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_at_start:
            # Inside a gradient accumulation: a checkpoint here would hold the stream past micro-batches whose
            # gradients it does not hold. Decide after optimizer steps only, timing whole steps.
            return
        now = self.clock()
        self._step_s, self._last_end = now - (self._last_end or now), now
        late = now + self._step_s + self._val_s + self.reserve_s > self.deadline
        if trainer.strategy.reduce_boolean_decision(late, all=False) and not trainer.should_stop:
            step = trainer.global_step
            folder = getattr(trainer.checkpoint_callback, "dirpath", None)
            folder = folder or os.path.join(trainer.log_dir, "checkpoints")
            path = os.path.join(folder, STOP_CHECKPOINT.format(step=step))
            trainer.save_checkpoint(path)
            trainer.should_stop = True
            self.stopped_at = step
            rank_zero_info(
                f"time budget: stopping after step {step}, {self.deadline - now:.0f} s before the "
                f"deadline; continue with --ckpt_path {path}"
            )
