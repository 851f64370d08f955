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

import math

import lightning as L
import torch
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
        # The name carries the step saved. Candidates take a logged "step" first (lighthouse.train.logger), which
        # inside a gradient accumulation already names the optimizer step still to come.
        metrics["step"] = torch.tensor(trainer.global_step)
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
            save_step_reached(trainer, "stopped by a signal")  # SIGTERM or Ctrl-C: lighthouse.train.exits says which


class MetricsBeforeCheckpoint(Callback):
    """Sends a step's metrics to the loggers before a checkpoint of that step is written.

    Lightning saves the periodic checkpoints in ``on_train_batch_end`` and logs the step's metrics only after every
    ``on_train_batch_end`` has run. A kill between the two (a SIGKILL while ``last.ckpt`` is written after the step
    file, say) lost the ``train/loss`` of the step just before the checkpoint for good: the resumed run starts after
    it. Here every save made in that window (``on_save_checkpoint`` runs before the file is written, after all the
    other callbacks' ``on_train_batch_end``) first logs the step's metrics through Lightning's own path, which also
    flushes each logger. Lightning's own call a moment later then sends only what changed since (nothing, normally),
    so no value is written twice.
    """

    def __init__(self) -> None:
        self._pending: int | None = None  # the step (as loggers count) ended but not yet logged by Lightning
        self._flushing = False
        self._early: tuple[int, dict[str, float]] | None = None  # (step, values) logged ahead of Lightning

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        connector = trainer._logger_connector
        original = type(connector).log_metrics.__get__(connector)

        def log_metrics(metrics, step=None):
            if step is None and trainer.training:
                at = trainer.fit_loop.epoch_loop._batches_that_stepped
                if self._flushing:
                    self._early = (at, {k: _value(v) for k, v in metrics.items()})
                elif self._early is not None:
                    if self._early[0] == at:
                        sent = self._early[1]
                        changed = {k: v for k, v in metrics.items() if not (k in sent and _same(sent[k], _value(v)))}
                        # A logged "step" places the values (lighthouse.train.logger): it goes with what is left.
                        if changed and "step" in metrics:
                            changed["step"] = metrics["step"]
                        metrics = changed
                    self._early = None
                self._pending = None
            return original(metrics, step)

        connector.log_metrics = log_metrics

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        trainer._logger_connector.__dict__.pop("log_metrics", None)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._pending = trainer.fit_loop.epoch_loop._batches_that_stepped

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        # Only inside the window: once the step is over (a save on SIGTERM, at the end of fit) the counter has moved
        # on and Lightning has logged it.
        if not trainer.training or self._pending != trainer.fit_loop.epoch_loop._batches_that_stepped:
            return
        self._flushing = True
        try:
            trainer._logger_connector.update_train_step_metrics()  # logs (and flushes) only when due
        finally:
            self._flushing = False
        self._pending = None


def _value(value):
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):  # not a scalar: compared as it is
        return value


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a is b
