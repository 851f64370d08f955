"""The reliability parts every training run gets, whatever its config names: LighthouseCLI calls these two.

- ``with_safety``: the checkpoint IO plugin (atomic, checksummed, safe loads) unless the config brings
  its own, and the callbacks that keep NaN out of checkpoints, save the step reached at the end and on SIGTERM,
  check what a resume changes, and mark when training starts (for ``lighthouse.train.exits``).
- ``prepare_fit``: before anything is written, remove temporary files of interrupted saves, and turn
  ``--ckpt_path last`` into the newest checkpoint that verifies.
"""

from __future__ import annotations

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from lighthouse.checkpoint.files import remove_orphans, resolve_last
from lighthouse.checkpoint.guards import FiniteCheckpoints
from lighthouse.checkpoint.io import AtomicCheckpointIO, is_remote
from lighthouse.checkpoint.last import LastCheckpoint
from lighthouse.checkpoint.resume import ResumeCheck
from lighthouse.train.exits import MarkTrainingStarted


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
    callbacks += [FiniteCheckpoints(), LastCheckpoint(), ResumeCheck(resume_overrides), MarkTrainingStarted()]
    return {**kwargs, "plugins": plugins, "callbacks": callbacks}


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
