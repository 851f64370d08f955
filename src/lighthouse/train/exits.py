"""How a ``train.py`` process ends: an exit code that says what happened, and a user error as one message.

- 0: training finished.
- 1: training stopped on a NaN/inf (message, no traceback: nothing crashed, and no checkpoint holds the NaN), or a
  checkpoint could not be written (a full disk; the message names the file and the newest intact checkpoint).
- 2: the config or an input is wrong (a bad value, a missing file, a damaged checkpoint), found before the first
  training step: the message names it; there is no traceback to read. jsonargparse's own errors exit 2 too.
- 143: SIGTERM (preemption) stopped the run after saving the step reached: 128 + 15, what a process killed by
  SIGTERM reports, so schedulers count the job as not finished and restart it (``--ckpt_path last`` continues).
- anything else, or any exception once training has started: a crash, with its full traceback (exit 1).

``LIGHTHOUSE_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lighthouse.checkpoint.guards import NonFiniteError
from lighthouse.checkpoint.io import CheckpointWriteError

EXIT_STOPPED, EXIT_USAGE, EXIT_PREEMPTED = 1, 2, 143
USER_ERRORS = (ValueError, TypeError, OSError, MisconfigurationException)

_training_started = False


class MarkTrainingStarted(Callback):
    """Records that the first training batch began: from then on an exception is a crash, not a config error."""

    def on_train_batch_start(self, *args) -> None:
        global _training_started
        _training_started = True


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(main: Callable[[list[str] | None], object], args: list[str] | None = None) -> int:
    """Run ``main(args)`` and return the exit code (see the module docstring)."""
    global _training_started
    _training_started = False
    debug = os.environ.get("LIGHTHOUSE_DEBUG") == "1"
    try:
        main(args)
    except SIGTERMException:
        _say("stopped by SIGTERM; the step reached is saved. Exit 143: resume with --ckpt_path last")
        return EXIT_PREEMPTED
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
    return 0
