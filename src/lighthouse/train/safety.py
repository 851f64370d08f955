"""The reliability parts every training run gets, whatever its config names: LighthouseCLI calls these two.

- ``with_safety``: the checkpoint IO plugin (atomic, checksummed, safe loads) unless the config brings its own, and
  the callbacks that keep NaN out of checkpoints, save the step reached at the end and on SIGTERM or Ctrl-C (a whole
  optimizer step: a stop inside a gradient accumulation waits for its end), log a step's metrics before its
  checkpoint, check what a resume changes, mark when training starts (for ``lighthouse.train.exits``) and let go of
  the run folder at the end. Every ModelCheckpoint overwrites (atomically) instead of writing ``last-v1.ckpt`` beside
  an existing ``last.ckpt``.
- ``prepare_fit``: before anything is written, remove temporary files of interrupted saves, and turn
  ``--ckpt_path last`` into the newest checkpoint that verifies.
"""

from __future__ import annotations

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from lighthouse.checkpoint.files import remove_orphans, resolve_last
from lighthouse.checkpoint.guards import FiniteCheckpoints
from lighthouse.checkpoint.io import AtomicCheckpointIO, is_remote
from lighthouse.checkpoint.last import LastCheckpoint, MetricsBeforeCheckpoint
from lighthouse.checkpoint.resume import ResumeCheck
from lighthouse.train import run_dir
from lighthouse.train.exits import MarkTrainingStarted, StopOnCtrlC, StopsAtWholeSteps


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def with_safety(kwargs: dict, trainer_config: dict, resume_overrides: list[str]) -> dict:
    """Trainer kwargs with the checkpoint IO and the reliability callbacks added to the ``plugins`` and
    ``callbacks`` that ``kwargs`` (else the trainer config) already has."""
    plugins = _as_list(kwargs.get("plugins", trainer_config.get("plugins")))
    io = [p for p in plugins if isinstance(p, CheckpointIO)]
    if not io:
        plugins.append(AtomicCheckpointIO())
    elif not any(isinstance(p, AtomicCheckpointIO) for p in io):
        rank_zero_warn(
            f"trainer.plugins has {type(io[0]).__name__}, not lighthouse.checkpoint.io.AtomicCheckpointIO: "
            "checkpoints are then not checksummed and may not be written atomically"
        )
    callbacks = _as_list(kwargs.get("callbacks", trainer_config.get("callbacks")))
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint):
            overwrite_in_place(callback)
    callbacks += [
        FiniteCheckpoints(),
        LastCheckpoint(),
        StopsAtWholeSteps(),
        MetricsBeforeCheckpoint(),
        StopOnCtrlC(),
        ResumeCheck(resume_overrides),
        MarkTrainingStarted(),
        ReleaseRunFolder(),
    ]
    return {**kwargs, "plugins": plugins, "callbacks": callbacks}


def overwrite_in_place(callback: ModelCheckpoint) -> None:
    """No ``-v1`` copies. ModelCheckpoint writes ``last-v1.ckpt`` (and ``stepN-v1.ckpt``) when a file of that name
    exists that it did not write in this run as far as it knows: after ``mv A B`` (its recorded folder no longer
    matches, so it forgets ``last_model_path``) or a resume from an earlier step. ``last.ckpt`` then stayed at the
    old step while the new state went elsewhere, and whatever read ``last.ckpt`` got the old model. The saves are
    atomic and ``--ckpt_path last`` goes by the step recorded in each file, so overwriting loses nothing."""
    callback._enable_version_counter = False


class ReleaseRunFolder(Callback):
    """Lets go of the run folder when fit or validate finishes (the lock of lighthouse.train.run_lock); a launch
    that fails is let go by lighthouse.train.exits, or at the latest when the process ends."""

    def teardown(self, trainer, pl_module, stage: str) -> None:
        run_dir.end_launch()


def checkpoint_folders(trainer) -> list[str]:
    """Where the trainer's ModelCheckpoints write, resolved exactly as they will resolve it at setup."""
    folders = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            # Lightning's own resolution (dirpath, else the first logger's run dir, else default_root_dir).
            folder = str(callback._ModelCheckpoint__resolve_ckpt_dir(trainer))
            if not is_remote(folder):
                folders.append(folder)
    return list(dict.fromkeys(folders))


def prepare_fit(trainer, ckpt_path):
    """Clean orphaned temporary files, then return the checkpoint to resume from (``last`` resolved)."""
    folders = checkpoint_folders(trainer)
    if rank_zero_only.rank == 0:
        for folder in folders:
            remove_orphans(folder)
    if ckpt_path == "last" and folders:  # with no local folder, Lightning resolves it as usual
        return resolve_last(folders)
    return ckpt_path
