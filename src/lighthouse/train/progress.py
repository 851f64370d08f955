"""What a run prints: progress by optimizer step on one line (a bar on a terminal, plain lines in a log file), a
one-line model summary, and none of Lightning's tips, placeholder counts or third-party deprecation notes."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings

from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from lighthouse.train.logger import validated_step
from lighthouse.train.stage import current_phase

# How the progress line names the metrics logged with prog_bar=True; others show under their last path part.
SHORT_NAMES = {
    "train/loss": "loss",
    "val/loss": "val",
    "val/loss_dense": "val dense",
    "perf/tokens_per_sec": "tok/s",
    "train/stage": "stage",
}


def format_value(name: str, value: float) -> str:
    if name == "train/stage":
        return str(int(value))
    if abs(value) >= 1000:
        return get_human_readable_count(int(value)).replace(" ", "")
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def metrics_line(metrics: dict[str, float], phase: str | None = None) -> str:
    """``loss 2.314 · val 2.401 · tok/s 1.2K · stage 1``: every progress-bar metric on one line, the usual
    ones first in that order.

    Validation with Lighthouse layers reports two losses, labelled ``val lh`` (the model as it trains) and
    ``val dense`` (the same weights, every layer dense: the number runs are compared on); where they are equal
    (dense attention) one ``val``. ``phase`` (e.g. "lighthouse 2/3": the attention of the phase being trained
    and its number) replaces the bare stage number."""
    metrics = dict(metrics)
    names = {"val/loss": "val"}
    if "val/loss_dense" in metrics and "val/loss" in metrics:
        if metrics["val/loss_dense"] == metrics["val/loss"]:
            del metrics["val/loss_dense"]
        else:
            names["val/loss"] = "val lh"
    if phase is not None and "train/stage" in metrics:
        metrics["train/stage"] = phase
    order = list(SHORT_NAMES)
    parts = []
    for name in sorted(metrics, key=lambda name: order.index(name) if name in order else len(order)):
        value = metrics[name]
        label = names.get(name, SHORT_NAMES.get(name, name.rsplit("/", 1)[-1]))
        if name == "train/stage" and isinstance(value, str):
            parts.append(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{label} {format_value(name, value)}")
    return " · ".join(parts)


def format_duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def silence_stdout() -> None:
    """Point standard output at /dev/null once its reader has gone (``train.py fit ... | head``): the run trains on
    and saves its checkpoints, its lines go nowhere, instead of the BrokenPipeError ending it with nothing saved.
    The file descriptor is replaced, not sys.stdout, so every writer (Lightning's, rich's, the exit's flush) follows."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class StepProgressBar(ProgressBar):
    """Training progress counted in optimizer steps up to ``trainer.max_steps``, so a resumed run starts where its
    checkpoint left off (not at 0 of an epoch). On a terminal: a rich bar with one line of metrics and a live
    validation bar. Otherwise (a log file, CI, a cluster job): a plain, flushed line every ``plain_every_s``
    seconds, at the first and last step and after each validation. Steps are ``trainer.global_step``, the
    optimizer steps done, which is how the charts and checkpoints count them too (lighthouse.train.logger): the
    last line of a run is ``step max_steps/max_steps``, and ``validation at step N`` is charted at N.
    """

    def __init__(self, plain_every_s: float = 30.0, force_terminal: bool | None = None):
        """
        Args:
            plain_every_s: Seconds between two progress lines when the output is not a terminal.
            force_terminal: Draw the bar (True) or print lines (False) whatever the output is; None detects it.
        """
        super().__init__()
        self.plain_every_s, self.force_terminal = plain_every_s, force_terminal
        self._enabled = True
        self.progress = None  # rich.progress.Progress while a bar is shown (kept afterwards for inspection)
        self._train_task = self._val_task = None
        self._start_time = self._last_line = 0.0
        self._start_step = 0

    # ---- ProgressBar interface -------------------------------------------------------------------------------
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args, **kwargs) -> None:
        try:
            if self._live():
                self.progress.console.print(*args, **kwargs)
            else:
                print(*args, **kwargs, flush=True)
        except BrokenPipeError:
            silence_stdout()

    @property
    def is_terminal(self) -> bool:
        return sys.stdout.isatty() if self.force_terminal is None else self.force_terminal

    @property
    def total_steps(self) -> int | None:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps is not None and max_steps > 0 else None

    # ---- training ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step, self._start_time = trainer.global_step, time.monotonic()
        self._last_line = -math.inf
        if not self._enabled:
            return
        if self.is_terminal:
            self._start_bar()
            self._train_task = self.progress.add_task(
                "train", total=self.total_steps, completed=trainer.global_step, metrics=""
            )
        else:
            total = self.total_steps or "?"
            self.print(f"training from step {trainer.global_step} to {total}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._enabled:
            return
        if self._live():
            self.progress.update(self._train_task, completed=trainer.global_step, metrics=self._metrics())
            return
        now, done = time.monotonic(), trainer.global_step
        first, last = done == self._start_step + 1, done == self.total_steps
        if first or last or now - self._last_line >= self.plain_every_s:
            self._last_line = now
            self.print(self._plain_line(done, now))

    def on_train_end(self, trainer, pl_module) -> None:
        if self._live():
            self.progress.update(self._train_task, completed=trainer.global_step, metrics=self._metrics())
            self.progress.stop()

    def _plain_line(self, done: int, now: float) -> str:
        total = self.total_steps
        line = f"step {done}/{total or '?'}"
        if total:
            line += f" ({100 * done // total}%)"
        metrics = self._metrics()
        if metrics:
            line += f" | {metrics}"
        elapsed, steps = now - self._start_time, done - self._start_step
        line += f" | {format_duration(elapsed)} elapsed"
        if total and steps > 0:
            line += f", {format_duration(elapsed / steps * (total - done))} left"
        return line

    # ---- validation --------------------------------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module) -> None:
        if not self._enabled or not self.is_terminal:
            return
        if not self._live():  # `validate` on its own, or the sanity check before training
            self._start_bar()
        name = "sanity check" if trainer.sanity_checking else "validate"
        total = self.total_val_batches_of(trainer)
        self._val_task = self.progress.add_task(name, total=total, metrics="")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._live() and self._val_task is not None:
            self.progress.advance(self._val_task)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._live() and self._val_task is not None:
            self.progress.remove_task(self._val_task)
            self._val_task = None
            if self._train_task is None:  # not inside fit: nothing else will stop the display
                self.progress.stop()
                self.print(f"validation at step {validated_step(trainer)} | {self._metrics()}")
            else:
                self.progress.update(self._train_task, metrics=self._metrics())
        elif self._enabled and not self.is_terminal and not trainer.sanity_checking:
            self.print(f"validation at step {validated_step(trainer)} | {self._metrics(prefix='val/')}")

    @staticmethod
    def total_val_batches_of(trainer) -> float | None:
        batches = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        total = sum(batches) if isinstance(batches, list) else batches
        return total if math.isfinite(total) else None

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _start_bar(self) -> None:
        # The metrics column never wraps (Lightning's bar put each metric on its own line): too narrow a terminal
        # cuts it short with an ellipsis instead.
        metrics = TextColumn("{task.fields[metrics]}", table_column=Column(no_wrap=True, overflow="ellipsis"))
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("<"),
            TimeRemainingColumn(compact=True),
            metrics,
            console=Console(force_terminal=self.force_terminal),
            transient=False,
        )
        self.progress.start()

    def _live(self) -> bool:
        return self._enabled and self.progress is not None and self.progress.live.is_started

    def _metrics(self, prefix: str = "") -> str:
        metrics = self.get_metrics(self.trainer, self.trainer.lightning_module)
        index, attention, count = current_phase(self.trainer)
        kind = "dense" if attention == "sdpa" else "lighthouse"  # lighthouse_naive computes the same attention
        phase = f"{kind} {index + 1}/{count}" if count > 1 else kind
        return metrics_line({k: v for k, v in metrics.items() if k.startswith(prefix) and k != "v_num"}, phase)


def describe_model(module) -> str:
    """One line: parameters, shape and which attention each layer runs (Lightning's table is not printed)."""
    config, model = module.config, module.model
    backends: dict[str, list[int]] = {}
    for i, name in enumerate(model.attention_backends):
        backends.setdefault(name, []).append(i)
    layers = "; ".join(f"{name} in layers {', '.join(map(str, idx))}" for name, idx in backends.items())
    return (
        f"model: {get_human_readable_count(model.num_params())} parameters, {config.n_layers} layers x dim "
        f"{config.dim} ({config.n_heads} heads x {config.head_dim}, SwiGLU {config.ffn_hidden}), context "
        f"{config.seq_len}; attention: {layers}"
    )


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_TIP_FILTER = _DropTips()


def quiet_lightning() -> None:
    """Drop what Lightning prints on every run that asks nothing of the user: advertising tips, a deprecation
    notice torch raises inside Lightning, and the "checkpoint directory is not empty" warning on every resume
    (a fresh launch always gets an empty run directory, see run_dir.py). Called by the CLI, not at import time."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def quiet_validate() -> None:
    """Validation restores the weights only, so Lightning's note that a checkpoint's callback states (its
    ModelCheckpoint's) were not restored asks nothing of the user there; fit keeps it."""
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used to create")
