"""How each kind of logger is pointed at the run folder ``<root>/<name>/<version>/`` (see run_dir.py).

Two kinds, by Lightning's own rule for ``trainer.log_dir``:

- TensorBoard and CSV loggers build ``<save_dir>/<name>/<version>/`` themselves: they get the root and the version.
- Any other logger (W&B, MLflow) writes under ``save_dir``, and Lightning takes ``save_dir`` as ``trainer.log_dir``
  (where config.yaml, data_manifest.json and throughput.jsonl go) while its checkpoints would go to
  ``<save_dir>/<project or experiment>/<run id>/checkpoints``. Such a logger gets the run folder itself as
  ``save_dir`` (its own files, e.g. W&B's offline ``wandb/``, land inside it), W&B the run's version as its run id
  (a resume continues the same W&B run), and the checkpoint callbacks the run's ``checkpoints/`` folder. Its run
  name is ``project`` (W&B) or ``experiment_name`` (MLflow), else ``name``.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

NAME_KEYS = ("project", "experiment_name", "name")  # the run name of a logger that does not build its own folder


def logger_class(logger: Namespace) -> type | None:
    module, _, name = str(logger.get("class_path", "")).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def builds_own_folder(logger: Namespace) -> bool:
    """True for TensorBoard and CSV loggers (and anything unknown: today's layout for them)."""
    kind = logger_class(logger)
    return kind is None or issubclass(kind, (TensorBoardLogger, CSVLogger))


def given_save_dir(logger: Namespace) -> str | None:
    """The save_dir a user set. jsonargparse fills in signature defaults (W&B's ".", MLflow's "./mlruns"), which
    would otherwise move the whole run there: for loggers that do not build their own folder, a default is unset."""
    value = logger.init_args.get("save_dir")
    if value is None or builds_own_folder(logger):
        return value
    kind = logger_class(logger)
    try:
        default = inspect.signature(kind).parameters["save_dir"].default
    except (TypeError, ValueError, KeyError):
        return value
    return None if value == default else value


def run_name(logger: Namespace) -> str | None:
    keys = ("name",) if builds_own_folder(logger) else NAME_KEYS
    return next((logger.init_args.get(k) for k in keys if logger.init_args.get(k) is not None), None)


def settings_for(logger: Namespace, root: Path, version: int | str, run: Path) -> list[tuple[str, object]]:
    """(init arg, value) pairs that put ``logger``'s files into the run folder ``run``."""
    if builds_own_folder(logger):
        return [("save_dir", str(root)), ("version", version)]
    settings: list[tuple[str, object]] = [("save_dir", str(run))]
    if "version" in logger.init_args:  # W&B: the run id
        settings.append(("version", version))
    return settings


def pin_checkpoint_folder(trainer, run: Path) -> None:
    """With a first logger that does not build its own folder, checkpoints without a dirpath go to the run's
    ``checkpoints/`` (Lightning would put them under ``<save_dir>/<project>/<run id>/``). Under DDP the folder
    of rank zero wins: ModelCheckpoint broadcasts it at setup."""
    if not trainer.loggers or isinstance(trainer.loggers[0], (TensorBoardLogger, CSVLogger)):
        return
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(run / "checkpoints")
