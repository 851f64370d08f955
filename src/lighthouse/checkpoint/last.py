"""A checkpoint of the step reached whenever fit stops without an error: at the end, and on SIGTERM (preemption).

Periodic checkpoints alone lose the steps after the last multiple of ``every_n_train_steps``: ``max_steps: 60``
with checkpoints every 50 left ``last.ckpt`` at step 50, and a SIGTERM saved nothing at all.

SIGTERM follows Lightning's convention: its signal handler only sets ``trainer.received_sigterm`` (forwarding the
signal to the other local ranks); the loop raises ``SIGTERMException`` at the end of the current step, every rank
gets ``on_exception``, and this callback saves there, as Lightning's ``save_on_exception`` would, but for SIGTERM
only (an arbitrary exception can leave a half-done step behind). ``lighthouse.train.exits`` then ends the process with
143, the status of a process terminated by SIGTERM, so SLURM, Kubernetes and torchrun see a job that did not
finish and restart it; ``--ckpt_path last`` continues exactly.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException


def save_step_reached(trainer: L.Trainer, reason: str) -> list[str]:
    """Save the current step through every ModelCheckpoint that has not saved it yet; return the files written.

    Uses ModelCheckpoint's own saving, so names, ``last_model_path`` and ``save_last='link'`` stay consistent.
    """
    if trainer.fast_dev_run or trainer.sanity_checking or trainer.global_step == 0:
        return []
    written = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback._last_global_step_saved == trainer.global_step:
            continue
        metrics = callback._monitor_candidates(trainer)
        if callback.save_last is True:
            callback._save_last_checkpoint(trainer, metrics)  # one file: the preemption grace period is short
        else:
            callback._save_checkpoint(trainer, callback.format_checkpoint_name(metrics))
            callback._save_last_checkpoint(trainer, metrics)  # a link to it ('link'), or nothing (no save_last)
        written.append(callback._last_checkpoint_saved)
        if callback.save_last:
            written.append(callback.last_model_path)
    if written:
        rank_zero_info(f"{reason}: saved global step {trainer.global_step} to {', '.join(dict.fromkeys(written))}")
    return written


class LastCheckpoint(Callback):
    """Saves the step reached at the end of fit and when SIGTERM stops it (added by LighthouseCLI), unless some
    save of that step already happened (a periodic one, or lighthouse.train.time_budget's stop checkpoint)."""

    def __init__(self) -> None:
        self._saved_step: int | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._saved_step = trainer.global_step  # every save passes here, whoever asked for it

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_step != trainer.global_step:
            save_step_reached(trainer, "end of training")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self._saved_step != trainer.global_step:
            save_step_reached(trainer, "SIGTERM")
