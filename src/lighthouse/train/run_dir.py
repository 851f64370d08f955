"""Where a run's files live: ``<root>/<name>/<version>/``, a fresh folder per launch and the same one on resume.

A run directory holds everything a launch writes: TensorBoard events, ``config.yaml`` (``config.1.yaml``, ... for
later launches), ``throughput.jsonl``, ``data_manifest.json`` and ``checkpoints/``. ``root`` is
``trainer.default_root_dir`` ('logs' unless set), ``name`` the logger's run name; a run without a logger lives in
``<root>/<version>/``. The version is the launch's start time; a launch that resumes a checkpoint of a run of the
same name continues that run's folder, so both stages of the two-job recipe form one set of curves, and a
``validate`` of such a checkpoint goes into ``<run>/validate/<start time>/`` (see ``choose_version``). W&B and MLflow
loggers are pointed at the same folder (run_loggers.py).

A launch holds its run folder (``run_lock``) from the moment it is chosen until the process ends, and a launch that
fails before its first training step takes back what it wrote there (``end_launch``): a fresh folder goes entirely,
an existing one loses only the files this launch added (its config.N.yaml, its event file). So a typo in a path
leaves no run folder that ``ls -d logs/demo/*/ | tail -n 1`` or ``--ckpt_path last`` could pick up later.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lighthouse.checkpoint.files import TMP_PATTERN, newest_usable, remove_orphans, resolve_last
from lighthouse.checkpoint.io import is_remote
from lighthouse.eval.run_logs import VALIDATIONS
from lighthouse.train import run_loggers
from lighthouse.train.run_lock import RunLock, lock_run, try_lock

DEFAULT_ROOT = "logs"
VERSION_FORMAT = "%Y-%m-%d_%H-%M-%S"  # sorts chronologically
RUN_LOGGER = "lighthouse.train.logger.RunLogger"
log = logging.getLogger(__name__)


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
        _claimed.add((group / version).absolute())
        return version
    raise AssertionError("unreachable")


_claimed: set[Path] = set()  # folders this process created with claim_new_version


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


def is_local_path(ckpt_path: str | None) -> bool:
    """A --ckpt_path that names a local file, not a value Lightning resolves itself or a URL."""
    if not ckpt_path or is_remote(ckpt_path) or ckpt_path in ("last", "best", "hpc"):
        return False
    return not ckpt_path.startswith("registry")  # 'registry' or 'registry:<model>:<version>'


def checkpoint_to_validate(group: Path) -> str:
    """``validate --ckpt_path last``: the newest verified checkpoint of the run ``fit --ckpt_path last`` would
    continue. Lightning itself would look only in this launch's new (empty) run folder, warn "No checkpoint will be
    loaded" and validate an untrained model; here that is an error naming where the search went."""
    found = latest_version_with_checkpoint(group)
    chosen = resolve_last([version_folder(group, found) / "checkpoints"]) if found is not None else None
    if chosen is None:
        raise FileNotFoundError(
            f"--ckpt_path last: no checkpoint in {group}/*/checkpoints/ or {group}/checkpoints/, so there is "
            "nothing trained to validate. Train first (lighthouse fit --config ...), check "
            "trainer.logger.init_args.name and save_dir, or pass --ckpt_path PATH"
        )
    return chosen


def resolve_ckpt_path(ckpt_path: str | None, group: Path, fit: bool) -> str | None:
    """The checkpoint a ``fit`` or ``validate`` launch loads: ``last`` stays for fit (lighthouse.train.safety
    resolves it in the run folder chosen here), validate's ``last`` and every local path become one file."""
    refuse_best(ckpt_path)
    if ckpt_path == "last" and not fit:
        return checkpoint_to_validate(group)
    return checkpoint_to_load(ckpt_path) if is_local_path(ckpt_path) else ckpt_path


def refuse_best(ckpt_path: str | None) -> None:
    """Lightning's ``--ckpt_path best`` means the best model of a ModelCheckpoint in this same process; a fresh
    launch has none, and Lightning's own error came only after a run folder had been made."""
    if ckpt_path == "best":
        raise ValueError(
            "--ckpt_path best: a new launch has no best checkpoint to go back to. Pass a checkpoint file, a run "
            "folder (logs/<name>/<start time>, or its checkpoints/), a run name (logs/<name>) or last"
        )


def checkpoint_to_load(ckpt_path: str) -> str:
    """``fit`` and ``validate`` with a local ``--ckpt_path``: a file (or sharded checkpoint folder) as given; a run
    folder, its ``checkpoints/`` or a run name resolved to its newest checkpoint that verifies, exactly as
    ``export.py --ckpt`` and ``generate.py --ckpt`` resolve it (``find_checkpoint``). FileNotFoundError naming
    ``--ckpt_path`` when there is nothing to load, found here before a run folder is chosen rather than by
    Lightning after config.yaml, the data manifest and an event file went into a fresh one."""
    chosen = find_checkpoint(ckpt_path, flag="--ckpt_path")
    return ckpt_path if Path(chosen) == Path(ckpt_path) else str(chosen)


def validation_version(group: Path, run_version: str, rank_zero: bool) -> str:
    """The version of a ``validate`` launch of the checkpoint of run ``run_version``: ``<run>/validate/<start
    time>``, claimed like a run's own."""
    validations = version_folder(group, run_version) / VALIDATIONS
    stamp = claim_new_version(validations) if rank_zero else time.strftime(VERSION_FORMAT)
    return str(Path(run_version) / VALIDATIONS / stamp)


def choose_version(
    group: Path,
    requested: int | str | None,
    ckpt_path: str | None,
    fit: bool,
    rank_zero: bool,
    nest_validations: bool = True,
) -> tuple[int | str, str | None]:
    """The run's version and a line for the user (or None). ``fit``: the subcommand trains (and resumes when
    ``ckpt_path`` is set); otherwise it validates ``ckpt_path`` (a local one already resolved to a file), inside the
    run that holds it where ``nest_validations`` (every logger builds its own folder). Only rank zero checks and
    creates folders: the other ranks start later and would see rank zero's first files, and the names they pick are
    never used (see ``RunPlacement``)."""
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
    elif ckpt_path:
        found = version_of_checkpoint(ckpt_path, group)
        if found is not None and fit:
            return found, None
        # A validation of a run's checkpoint is kept with that run, but apart from its training curves: in the
        # run's own folder it would add a point to them (at the step the module logs, 0 in a lone validate, and
        # else replacing the training's own validation at that step, measured perhaps on other batches), and the
        # run's lock would refuse it while the run still trains. A new run folder per call, as before, left
        # folders without a checkpoint beside the runs, for `ls -d logs/<name>/*/ | tail -n 1` to pick.
        if found is not None and nest_validations:
            return validation_version(group, found, rank_zero), None
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
    ckpt_path: str | None = None  # validate's `--ckpt_path` resolved to a file (from `last` or a folder)
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
    fit, rank_zero = subcommand == "fit", rank_zero_only.rank == 0
    given = config.get("ckpt_path")
    ckpt_path = resolve_ckpt_path(given, group, fit) if subcommand else given
    # W&B takes the version as its run id, which cannot hold the "/" of a nested folder.
    nest = all(run_loggers.builds_own_folder(logger) for logger in loggers)
    version, note = choose_version(group, requested, ckpt_path, fit, rank_zero, nest_validations=nest)
    if ckpt_path != given:
        chosen = f"--ckpt_path {given}: loading {ckpt_path}, the newest checkpoint there that verifies"
        note = "\n".join(filter(None, [chosen, note]))
    placement = RunPlacement(version_folder(group, version), note, None if fit or ckpt_path == given else ckpt_path)
    if ckpt_path != given:
        # What fit loads (the classes are built from this config); config.yaml keeps what the user asked for.
        placement._restore.append((config, "ckpt_path", given))
        config["ckpt_path"] = ckpt_path
    if rank_zero and subcommand:
        begin_launch(placement.path)
        if fit:
            sweep_orphans(group)
    for logger in loggers:
        for key, value in run_loggers.settings_for(logger, root, version, placement.path):
            placement._restore.append((logger.init_args, key, logger.init_args.get(key)))
            logger.init_args[key] = value
    return placement


# ---- the launch that holds a run folder ------------------------------------------------------------------------


@dataclass
class _Launch:
    folder: Path
    created: bool  # the folder is this launch's own (claimed or made now)
    before: set[str]  # what the folder held when the launch took it
    lock: RunLock


_launch: _Launch | None = None


def begin_launch(folder: Path) -> None:
    """Take ``folder`` for this launch: create it when needed and lock it (``RunInUse`` when another process holds
    it). Ends any earlier launch of this process first (tests and notebooks run several in one process)."""
    end_launch()
    global _launch
    folder = folder.absolute()
    created = folder in _claimed or not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_run(folder)
    except BaseException:
        if created:
            _remove_tree(folder)
        raise
    before = {p.name for p in folder.iterdir()}
    _launch = _Launch(folder, created, before, lock)


def end_launch(discard: bool = False) -> None:
    """Let go of the run folder. ``discard``: the launch failed before its first training step, so what it wrote
    goes (the whole folder when it made it). Otherwise a folder it made and left empty goes too."""
    global _launch
    launch, _launch = _launch, None
    if launch is None:
        return
    launch.lock.release()
    if discard and launch.created:
        _remove_tree(launch.folder)
        try:
            launch.folder.parent.rmdir()  # the run group, when this was its only run: a refused launch leaves nothing
        except OSError:
            pass  # it holds other runs (or is the log root itself)
    elif discard:
        for path in launch.folder.iterdir():
            if path.name not in launch.before:
                _remove_tree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif launch.created:
        try:
            launch.folder.rmdir()  # fails, as it should, when the run wrote anything
        except OSError:
            pass


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _claimed.discard(path)


atexit.register(end_launch)


def sweep_orphans(group: Path) -> list[Path]:
    """Remove the temporary files of interrupted saves in every run of ``group``, not only the one this launch
    continues: a run killed during its first save has no checkpoint, so ``--ckpt_path last`` never goes back to it
    and its torn file (as large as a checkpoint) would stay forever. A run folder another process holds is left
    alone (its save may be in progress)."""
    if not group.is_dir():
        return []
    held = _launch.folder if _launch is not None else None
    removed = []
    for run in [group] + [p for p in group.iterdir() if p.is_dir()]:
        folder = run / "checkpoints"
        if not folder.is_dir() or not any(TMP_PATTERN.fullmatch(p.name) for p in folder.iterdir()):
            continue
        if run.absolute() == held:
            removed += remove_orphans(folder)
            continue
        lock = try_lock(run)
        if lock is not None:
            try:
                removed += remove_orphans(folder)
            finally:
                lock.release()
    return removed


def find_checkpoint(arg: str, flag: str = "--ckpt") -> Path | str:
    """What the after-training tools (``src/export.py --ckpt``) and fit's and validate's ``--ckpt_path`` (``flag``,
    the option messages name) accept, so no command depends on folder order:

    - a checkpoint file (or a sharded checkpoint folder ``X.ckpt/``): itself;
    - a run folder (``logs/demo/<start time>``) or its ``checkpoints/``: its checkpoint with the highest verified
      global step, as ``--ckpt_path last`` would resume;
    - a run name (``logs/demo``): the run ``--ckpt_path last`` continues (the one whose newest checkpoint was
      written last), then its newest checkpoint as above;
    - any of these folders followed by ``/last`` (``logs/demo/last``), where no such file exists.

    A URL passes through unchanged. Raises FileNotFoundError naming where it looked."""
    if is_remote(arg):
        return arg  # the loader fetches it
    path = Path(arg)
    if path.name == "last" and not path.exists():
        path = path.parent
    if path.is_file() or path.suffix == ".ckpt":
        if not path.exists():
            raise FileNotFoundError(f"{flag} {arg}: no such file")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} {arg}: no such file or folder")
    if path.name == "checkpoints":
        folders = [path]
    elif (path / "checkpoints").is_dir():
        folders = [path / "checkpoints"]
    else:
        version = latest_version_with_checkpoint(path)
        folders = [version_folder(path, version) / "checkpoints"] if version is not None else []
    chosen, skipped = newest_usable(folders[0]) if folders else (None, [])
    damaged = "".join(f"; {p.name} is damaged ({v.detail})" for p, v in skipped)
    if chosen is None:
        raise FileNotFoundError(
            f"{flag} {arg}: no usable checkpoint in {path}/checkpoints/ or {path}/*/checkpoints/{damaged}. Pass a "
            ".ckpt file, a run folder (logs/<name>/<start time>) or a run name (logs/<name>)"
        )
    if skipped:
        log.warning("%s %s: skipped%s", flag, arg, damaged.lstrip(";"))
    return chosen
