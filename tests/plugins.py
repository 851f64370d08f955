"""Test-only plugins and callbacks, named by class path (``plugins.SlowSteps``) in configs the tests write."""

from __future__ import annotations

import io
import time
from pathlib import Path

import lightning as L
import torch

from lighthouse.checkpoint.io import AtomicCheckpointIO


class SlowCheckpointIO(AtomicCheckpointIO):
    """Writes half of a checkpoint, drops a marker file, then stalls: a window to SIGKILL the writer in."""

    def __init__(self, slow_from_step: int, marker: str, only_name: str | None = None):
        """
        Args:
            slow_from_step: Stall in the saves of this global step and later ones.
            marker: File written once the first half is on disk.
            only_name: Stall only in saves to this file name (e.g. 'last.ckpt'); None stalls in every save.
        """
        super().__init__()
        self.slow_from_step, self.marker, self.only_name = slow_from_step, marker, only_name
        self._name = ""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self._name = Path(path).name
        super().save_checkpoint(checkpoint, path, storage_options)

    def write(self, checkpoint, f) -> None:
        if checkpoint["global_step"] < self.slow_from_step or self.only_name not in (None, self._name):
            return super().write(checkpoint, f)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        Path(self.marker).write_text(str(checkpoint["global_step"]))
        time.sleep(60)
        f.write(data[len(data) // 2 :])


class FullDiskCheckpointIO(AtomicCheckpointIO):
    """Fails like a full disk (ENOSPC) after writing part of the checkpoints of ``from_step`` on."""

    def __init__(self, from_step: int):
        super().__init__()
        self.from_step = from_step

    def write(self, checkpoint, f) -> None:
        if checkpoint["global_step"] < self.from_step:
            return super().write(checkpoint, f)
        f.write(b"\0" * 4096)
        raise OSError(28, "No space left on device")


class RequireNoOrphans(L.Callback):
    """Fails the run at setup if a temporary file of an interrupted save is still in ``folder``: the start of a
    run must clean them before anything is written (a full disk would block everything else)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def setup(self, trainer, pl_module, stage: str) -> None:
        left = sorted(p.name for p in self.folder.glob("*.tmp-*"))
        assert not left, f"orphaned temporary files at setup: {left}"


class SlowSteps(L.Callback):
    """Sleeps after every step so a test can signal or kill the process between two checkpoints."""

    def __init__(self, seconds: float, progress: str | None = None):
        """
        Args:
            seconds: Sleep after each step.
            progress: File that holds the global step reached, rewritten after each step (before the sleep).
        """
        self.seconds, self.progress = seconds, progress

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.progress:
            Path(self.progress).write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class PoisonWeights(L.Callback):
    """Turns one weight into NaN before the given global step, as a diverging run would."""

    def __init__(self, at_step: int, after_step: bool = False):
        """
        Args:
            at_step: Global step at which the weight turns NaN.
            after_step: Poison after that step's optimizer update (so its loss and gradients were finite).
        """
        self.at_step, self.after_step = at_step, after_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.after_step and trainer.global_step == self.at_step:
            self._poison(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.after_step and trainer.global_step == self.at_step:
            self._poison(pl_module)

    @staticmethod
    def _poison(pl_module) -> None:
        with torch.no_grad():
            pl_module.model.output.weight[0, 0] = float("nan")


class RecordBackends(L.Callback):
    """Records the attention backends every training step runs with (``backends[step]``)."""

    def __init__(self):
        self.backends: dict[int, list[str]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # At batch end, whatever the order of the callbacks' batch-start hooks; the optimizer has stepped, so
        # the step that just ran is global_step - 1.
        self.backends[trainer.global_step - 1] = list(pl_module.model.attention_backends)


class RecordGuardHistory(L.Callback):
    """Records how many steps the divergence guard's references hold after every training step (``seen[step]``)."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.seen[trainer.global_step - 1] = pl_module.step_guard.steps_seen


class KillAfterSave(AtomicCheckpointIO):
    """SIGKILLs its own process right after the first checkpoint of ``step`` is complete on disk (the step file;
    ``last.ckpt`` of that step is never written): the moment a kill loses what was not flushed yet."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        if checkpoint["global_step"] == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class SignalAfterBatch(L.Callback):
    """Sends ``signal`` (a name: SIGTERM, SIGINT) at the end of train micro-batch ``at`` (1-based) of global rank 0,
    as a scheduler's preemption or a Ctrl-C would arrive between two micro-batches: to this process, or with
    ``group`` to its whole process group (every rank and data worker, as SLURM and a terminal's Ctrl-C do). With
    ``outside`` the group's signal comes from another process, as a scheduler's does: a data worker tells a signal
    from its parent (torch's worker handler exits quietly on one) from anyone else's."""

    def __init__(self, at: int, signal: str = "SIGTERM", group: bool = False, outside: bool = False) -> None:
        self.at, self.signal, self.group, self.outside, self.seen = at, signal, group, outside, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        import os
        import signal as signals
        import subprocess
        import sys

        self.seen += 1
        if self.seen == self.at and trainer.global_rank == 0:
            number = getattr(signals, self.signal)
            if self.outside:  # the sender is in the group too: it ignores its own signal
                n, group = int(number), os.getpgid(0)
                send = f"import os, signal; signal.signal({n}, signal.SIG_IGN); os.killpg({group}, {n})"
                subprocess.run([sys.executable, "-c", send], check=True)
            elif self.group:
                os.killpg(os.getpgid(0), number)
            else:
                os.kill(os.getpid(), number)


class DeadlineAfterBatch(L.Callback):
    """Makes the run's TimeBudget see its deadline pass at the end of train micro-batch ``at`` (1-based); listed
    before the TimeBudget, so that one's own check of the batch sees it."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        from lighthouse.train.time_budget import TimeBudget

        self.seen += 1
        if self.seen == self.at:
            for callback in trainer.callbacks:
                if isinstance(callback, TimeBudget):
                    callback.deadline = -1.0
