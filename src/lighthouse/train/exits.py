"""How a ``train.py`` process ends: an exit code that says what happened, and a user error as one message.

- 0: training finished.
- 1: training stopped on a NaN/inf (message, no traceback: nothing crashed, and no checkpoint holds the NaN), or a
  checkpoint could not be written (a full disk; the message names the file and the newest intact checkpoint).
- 2: the config or an input is wrong (a bad value, a missing file, a damaged checkpoint), found before the first
  training step: the message names it; there is no traceback to read. jsonargparse's own errors exit 2 too.
- 130: Ctrl-C (SIGINT). The first one stops the run like SIGTERM: the current step ends, is saved, and the
  process exits 130 (128 + 2, what a shell reports for a process interrupted by Ctrl-C). A second Ctrl-C aborts at
  once without saving; the newest checkpoint saved before it is what ``--ckpt_path last`` resumes.
- 143: SIGTERM (preemption) stopped the run after saving the step reached: 128 + 15, what a process killed by
  SIGTERM reports, so schedulers count the job as not finished and restart it (``--ckpt_path last`` continues).
- anything else, or any exception once training has started: a crash, with its full traceback (exit 1).

A launch that ends before its first training step, whatever the reason, takes back what it wrote into its run
folder (``lighthouse.train.run_dir.end_launch``). ``LIGHTHOUSE_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lighthouse.checkpoint.guards import NonFiniteError
from lighthouse.checkpoint.io import CheckpointWriteError
from lighthouse.train import run_dir

EXIT_STOPPED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PREEMPTED = 1, 2, 130, 143
USER_ERRORS = (ValueError, TypeError, OSError, MisconfigurationException)

_training_started = False
_interrupts = 0  # Ctrl-C presses seen since fit started
_stop_requested = False  # a SIGTERM or the first Ctrl-C since fit started, not yet acted on (StopsAtWholeSteps)


class MarkTrainingStarted(Callback):
    """Records that the first training batch began: from then on an exception is a crash, not a config error."""

    def on_train_batch_start(self, *args) -> None:
        global _training_started
        _training_started = True


class StopOnCtrlC(Callback):
    """Ctrl-C during fit: the first press asks training to stop after the current optimizer step exactly as SIGTERM
    does (``StopsAtWholeSteps``; lighthouse.checkpoint.last saves the step reached), the second raises
    KeyboardInterrupt at once.

    Installed at fit start, before the data loader workers fork; the project's workers ignore Ctrl-C
    (lighthouse.data.datamodule.leave_stop_signals_to_the_trainer), and a data module's without that inherit this
    handler (their copy only counts presses) instead of dying of a KeyboardInterrupt in them. Lightning snapshots
    the signal handlers later (and restores that snapshot at teardown); the snapshot is pointed back at the
    handler that was there before this one, so whatever way fit ends, Ctrl-C behaves as before afterwards.
    """

    def __init__(self) -> None:
        self._previous = None

    def on_fit_start(self, trainer, pl_module) -> None:
        global _interrupts
        _interrupts = 0
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (fit in a thread keeps Lightning's behaviour)

        def on_sigint(signum, frame) -> None:
            global _interrupts
            _interrupts += 1
            if _interrupts > 1:
                raise KeyboardInterrupt
            request_stop()
            _say("Ctrl-C: stopping after this step and saving it (press Ctrl-C again to abort without saving)")

        self._previous = signal.signal(signal.SIGINT, on_sigint)

    def on_train_start(self, trainer, pl_module) -> None:
        self._fix_snapshot(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Runs after lighthouse.checkpoint.last's save on a stop (it comes earlier in the callback list), so a
        # second Ctrl-C during that save still aborts it.
        self.teardown(trainer, pl_module, "")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous is not None:
            self._fix_snapshot(trainer)
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _fix_snapshot(self, trainer) -> None:
        snapshot = getattr(trainer._signal_connector, "_original_handlers", None)
        if self._previous is not None and isinstance(snapshot, dict) and signal.SIGINT in snapshot:
            snapshot[signal.SIGINT] = self._previous


def request_stop() -> None:
    """Ask training to stop after the current optimizer step (what SIGTERM and a first Ctrl-C do)."""
    global _stop_requested
    _stop_requested = True


class StopsAtWholeSteps(Callback):
    """SIGTERM and the first Ctrl-C stop training after the current optimizer step, on every rank together.

    Lightning's SIGTERM handler sets ``received_sigterm`` at once, and its loop ends after whichever micro-batch is
    running. Inside a gradient accumulation the step reached was then saved with the data stream past micro-batches
    whose gradients were in no checkpoint (the resumed step had half its gradient). Under DDP each rank acted on its
    own flag, and Lightning's handler runs a broadcast on every delivery: a SIGTERM to the whole process group (what
    SLURM sends), or a Ctrl-C that reached rank 0 only, left the ranks in mismatched collectives (a hang, or a
    'non-finite values' refusal that saved nothing). Here the handlers only note the request (SIGTERM is forwarded
    once to the processes this one launched, as Lightning does); after each optimizer step the ranks decide together,
    any rank's request stopping all, and only then is ``received_sigterm`` set: every rank ends the same whole step
    and lighthouse.checkpoint.last saves it. One all-reduce of a flag per optimizer step under DDP, none alone."""

    def __init__(self) -> None:
        self._step_at_start: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        global _stop_requested
        _stop_requested = False

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its handler just before training starts (and restores the one before it at teardown).
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum, frame) -> None:
            if not _stop_requested:
                launcher = trainer.strategy.launcher
                if launcher is not None:
                    launcher.kill(signum)
                _say("SIGTERM: stopping after this step and saving it")
            request_stop()

        signal.signal(signal.SIGTERM, on_sigterm)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_at_start:
            return  # inside a gradient accumulation: its gradient is in no checkpoint yet
        if trainer.strategy.reduce_boolean_decision(_stop_requested, all=False):
            trainer._signal_connector.received_sigterm = True  # the loop raises SIGTERMException after this batch


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(main: Callable[[list[str] | None], object], args: list[str] | None = None) -> int:
    """Run ``main(args)`` and return the exit code (see the module docstring)."""
    global _training_started, _interrupts
    _training_started, _interrupts = False, 0
    debug = os.environ.get("LIGHTHOUSE_DEBUG") == "1"
    failed = True
    try:
        main(args)
        failed = False
    except SIGTERMException:
        failed = False  # the step reached is saved: nothing to take back
        if _interrupts:
            _say("stopped by Ctrl-C; the step reached is saved. Exit 130: resume with --ckpt_path last")
            return EXIT_INTERRUPTED
        _say("stopped by SIGTERM; the step reached is saved. Exit 143: resume with --ckpt_path last")
        return EXIT_PREEMPTED
    except (KeyboardInterrupt, SystemExit) as err:
        # A second Ctrl-C, or one before training started (Lightning turns a KeyboardInterrupt inside fit into
        # exit 1 after its own shutdown).
        if isinstance(err, SystemExit) and not _interrupts:
            failed = err.code not in (0, None)
            raise
        _say("interrupted (Ctrl-C): nothing more saved. Exit 130: --ckpt_path last resumes the newest checkpoint")
        return EXIT_INTERRUPTED
    except (NonFiniteError, CheckpointWriteError) as err:
        if debug:
            raise
        _say(f"error: {err}")
        return EXIT_STOPPED
    except USER_ERRORS as err:
        if debug or _training_started:
            raise
        _say(f"error: {err}\n(set LIGHTHOUSE_DEBUG=1 to see the traceback)")
        return EXIT_USAGE
    finally:
        run_dir.end_launch(discard=failed and not _training_started)
    return 0
