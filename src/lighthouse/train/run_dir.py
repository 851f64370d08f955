"""Where a run's files live: ``<root>/<name>/<version>/``, a fresh folder per launch and the same one on resume.

A run directory holds everything a launch writes: TensorBoard events, ``config.yaml`` (``config.1.yaml``, ... for
later launches), ``throughput.jsonl``, ``data_manifest.json`` and ``checkpoints/``. ``root`` is
``trainer.default_root_dir`` ('logs' unless set), ``name`` the logger's run name; a run without a logger lives in
``<root>/<version>/``. The version is the launch's start time; a launch that resumes a checkpoint of a run of the
same name continues that run's folder, so both stages of the two-job recipe form one set of curves. W&B and MLflow
loggers are pointed at the same folder (run_loggers.py).
"""

from __future__ import annotations

import atexit
import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lighthouse.train import run_loggers

DEFAULT_ROOT = "logs"
VERSION_FORMAT = "%Y-%m-%d_%H-%M-%S"  # sorts chronologically
RUN_LOGGER = "lighthouse.train.logger.RunLogger"


def version_folder(group: Path, version: int | str) -> Path:
    """The folder a logger uses for ``version`` (Lightning names integer versions ``version_N``)."""
    return group / (f"version_{version}" if isinstance(version, int) else version)


def claim_new_version(group: Path, now: float | None = None) -> str:
    """Create a fresh version folder named by the start time and return its name. ``mkdir`` either creates or
    fails, so two launches started in the same second still get two folders (the second gets a ``_1`` suffix)."""
    group.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime(VERSION_FORMAT, time.localtime(now))
    for n in itertools.count():
        version = stamp if n == 0 else f"{stamp}_{n}"
        try:
            (group / version).mkdir()
        except FileExistsError:
            continue
        # A launch that fails before writing anything (a config error) leaves no empty folder behind.
        atexit.register(_remove_if_empty, group / version)
        return version
    raise AssertionError("unreachable")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # fails, as it should, when the run wrote anything
    except OSError:
        pass


def version_of_checkpoint(ckpt_path: str | os.PathLike, group: Path) -> str | None:
    """The version of the run in ``group`` that holds a checkpoint (``<group>/<version>/checkpoints/X.ckpt``;
    "" for ``<group>/checkpoints/X.ckpt``), or None when the checkpoint lies elsewhere."""
    folder = Path(ckpt_path).absolute().parent
    if folder.name != "checkpoints":
        return None
    run, group = folder.parent, group.absolute()
    if run == group:
        return ""
    return run.name if run.parent == group else None


def newest_checkpoint_time(run: Path) -> float | None:
    times = [p.stat().st_mtime for p in (run / "checkpoints").glob("*.ckpt")]
    return max(times, default=None)


def latest_version_with_checkpoint(group: Path) -> str | None:
    """The version whose newest checkpoint was written last: the run that ``--ckpt_path last`` continues."""
    if not group.is_dir():
        return None
    runs = [("", group)] + [(p.name, p) for p in group.iterdir() if p.is_dir()]
    written = [(t, version) for version, run in runs if (t := newest_checkpoint_time(run)) is not None]
    return max(written)[1] if written else None


def holds_a_run(run: Path) -> bool:
    """True when ``run`` already has TensorBoard events or checkpoints of an earlier launch."""
    return any(run.glob("events.out.tfevents.*")) or newest_checkpoint_time(run) is not None


def choose_version(
    group: Path, requested: int | str | None, ckpt_path: str | None, fit: bool, rank_zero: bool
) -> tuple[int | str, str | None]:
    """The run's version and a line for the user (or None). ``fit``: the subcommand trains (and resumes when
    ``ckpt_path`` is set). Only rank zero checks and creates folders: the other ranks start later and would see
    rank zero's first files, and the names they pick are never used (see ``RunPlacement``)."""
    if requested is not None:
        if rank_zero and fit and not ckpt_path and holds_a_run(version_folder(group, requested)):
            raise ValueError(
                f"trainer.logger.init_args.version={requested!r}: {version_folder(group, requested)} already holds "
                "a run; continue it with --ckpt_path last, or leave version null for a new run directory"
            )
        return requested, None
    note = None
    if fit and ckpt_path == "last":
        found = latest_version_with_checkpoint(group)
        if found is not None:
            return found, f"--ckpt_path last: continuing the run with the newest checkpoint, {group / found}"
    elif fit and ckpt_path:
        found = version_of_checkpoint(ckpt_path, group)
        if found is not None:
            return found, None
        note = f"{ckpt_path} is not a checkpoint of a run in {group}: this launch gets its own run directory"
    stamp = claim_new_version(group) if rank_zero else time.strftime(VERSION_FORMAT)
    return stamp, note


@dataclass
class RunPlacement:
    """The run directory chosen for a launch, and the config values filled in to get there.

    The filled values (root, version) are put back after the classes are built, so the saved ``config.yaml``
    shows what the user asked for: launching it again starts a new run instead of appending to this one.
    Under DDP every rank parses the config itself; only rank zero creates a folder, and the folder every rank
    writes to comes from rank zero (Lightning broadcasts ``trainer.log_dir`` and the checkpoint folder).
    """

    path: Path
    note: str | None = None
    _restore: list[tuple[Namespace, str, object]] = field(default_factory=list)

    def restore_requested_values(self) -> None:
        for namespace, key, value in self._restore:
            namespace[key] = value
        self._restore.clear()


def loggers_of(trainer: Namespace) -> list[Namespace]:
    logger = trainer.get("logger")
    if logger is None or logger is True:  # Lightning's default logger: make it ours, in the same layout
        logger = trainer["logger"] = Namespace(
            class_path=RUN_LOGGER, init_args=Namespace(save_dir=None, name="run", version=None)
        )
    if logger is False:
        return []
    return [lg for lg in (logger if isinstance(logger, list) else [logger]) if isinstance(lg, Namespace)]


def place_run(config: Namespace, subcommand: str | None) -> RunPlacement:
    """Fill in the root and version of every logger in ``config`` (a parsed LightningCLI config) and return the
    run directory. Refuses a root given twice with two values."""
    trainer = config["trainer"]
    loggers = [lg for lg in loggers_of(trainer) if "save_dir" in lg.get("init_args", Namespace())]
    given = [trainer.get("default_root_dir")] + [run_loggers.given_save_dir(lg) for lg in loggers]
    given = [str(path) for path in given if path is not None]
    if len({os.path.abspath(path) for path in given}) > 1:
        raise ValueError(
            f"trainer.default_root_dir and trainer.logger.init_args.save_dir disagree ({given}): set only "
            "trainer.default_root_dir, the folder that holds every run"
        )
    root = Path(given[0] if given else DEFAULT_ROOT)
    name = run_loggers.run_name(loggers[0]) if loggers else None
    group = root / name if name else root
    requested = loggers[0].init_args.get("version") if loggers else None
    ckpt_path = config.get("ckpt_path")
    version, note = choose_version(
        group, requested, ckpt_path, fit=subcommand == "fit", rank_zero=rank_zero_only.rank == 0
    )
    placement = RunPlacement(version_folder(group, version), note)
    for logger in loggers:
        for key, value in run_loggers.settings_for(logger, root, version, placement.path):
            placement._restore.append((logger.init_args, key, logger.init_args.get(key)))
            logger.init_args[key] = value
    return placement
