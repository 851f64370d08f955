"""The TensorBoard logger of a run: a page without placeholder charts, and markdown notes at given steps; and the
one step convention of everything a run reports.

Step N is the state after N optimizer steps, everywhere: the console's ``step N/max_steps`` and ``validation at step
N``, the checkpoint of global step N (``stepNNNNNN.ckpt``), ``throughput.jsonl``'s ``step``, and every logger's
scalars. A training value at step N is that of the N-th optimizer step (its batch's loss, its gradient norm); a
validation at step N ran on the weights after it, so the last training loss and the last validation of a run both
sit at ``max_steps``. Lightning's own count for its loggers lags one behind (it logs with the optimizer steps done
*before* the batch), so the module logs the step itself (``log_step``). Event files written before this
convention carry no ``steps`` note; lighthouse.eval.run_logs moves their points up by one when it reads them.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn

from lighthouse.checkpoint.files import recorded_step
from lighthouse.checkpoint.io import is_remote
from lighthouse.eval.run_logs import STEPS_NOTE_TAG

STEPS_NOTE = (
    "Step N is the state after N optimizer steps: a training value at step N is that of the N-th step's batch, a "
    "validation at step N ran on the weights after it (the checkpoint of global step N; the console's step N)."
)


class RunLogger(TensorBoardLogger):
    """TensorBoard events of one run in ``<save_dir>/<name>/<version>/``.

    Unlike Lightning's logger it writes no ``hp_metric`` placeholder (a constant -1) and drops the ``epoch``
    value Lightning adds to every record (training here is one endless epoch, so that chart is a flat 0). Tags
    keep their group prefix (``train/``, ``val/``, ``perf/``), which TensorBoard turns into one section each.
    """

    def __init__(self, save_dir: str | None = None, name: str = "run", version: int | str | None = None):
        """
        Args:
            save_dir: Folder that holds every run; null means trainer.default_root_dir ('logs' unless set).
            name: Run name: all launches of one recipe (and its recovery stage) share it.
            version: Folder of this run under ``<save_dir>/<name>``; null gives each launch a fresh one (named
                by its start time) and a resume the folder of its checkpoint. "" means ``<save_dir>/<name>``.
        """
        super().__init__(
            save_dir if save_dir is not None else "logs", name=name, version=version, default_hp_metric=False
        )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {key: value for key, value in metrics.items() if key != "epoch"}
        if metrics:
            super().log_metrics(metrics, step)


def write_note(trainer: L.Trainer, tag: str, markdown: str, step: int) -> None:
    """A markdown note in TensorBoard's text tab at ``step``, for every TensorBoard logger of the run (on ranks
    other than zero their ``experiment`` is a dummy, so only rank zero writes)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text(tag, markdown, global_step=step)


def log_step(module: L.LightningModule, step: int) -> None:
    """Put what ``module`` logs in this training step or validation at ``step`` for every logger (Lightning uses
    a logged ``step`` as the step of the values logged with it and does not chart it)."""
    module.log("step", float(step), sync_dist=False)


def validated_step(trainer) -> int:
    """The global step of the weights being validated. Inside fit it is the trainer's; ``validate`` on its own
    restores only the weights of its checkpoint, not the loops that count steps, so there the trainer says 0 and
    the step is the one the checkpoint records."""
    ckpt_path = trainer.ckpt_path
    if trainer.state.fn == TrainerFn.VALIDATING and ckpt_path and not is_remote(ckpt_path):
        step = recorded_step(ckpt_path)
        if step is not None:
            return step
    return trainer.global_step


def write_steps_note(trainer: L.Trainer) -> None:
    """The marker of this convention, once per launch (each launch writes its own event file)."""
    write_note(trainer, STEPS_NOTE_TAG, STEPS_NOTE, validated_step(trainer))
