"""The checkpoint folder: a sha256 beside every checkpoint, the newest one that verifies, orphaned temporary files.

Each checkpoint ``X.ckpt`` written by ``AtomicCheckpointIO`` gets ``X.ckpt.sha256`` in ``sha256sum`` format, so
``sha256sum -c X.ckpt.sha256`` checks it by hand too. A file without one (older runs, copies, a crash between the
two renames of a save) is "unverified": usable, but not proven intact.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)

SUFFIX = ".sha256"
CHECKPOINT_SUFFIX = ".ckpt"
# What a save in progress is called (see AtomicCheckpointIO); a file like this outside a save is an orphan.
TMP_PATTERN = re.compile(r".+\.ckpt(\.sha256)?\.tmp-\d+")
# The file of a sharded (FSDP) checkpoint folder that holds everything but the tensors (Lightning's name for it).
SHARDED_METADATA = "meta.pt"
_CHUNK = 1 << 24


def _warn(message: str, *args) -> None:
    if rank_zero_only.rank == 0:  # every rank resolves the same files; one says so
        log.warning(message, *args)


def sidecar(path: str | Path) -> Path:
    return Path(f"{path}{SUFFIX}")


def remove_checkpoint_file(path: str | Path) -> None:
    """Delete a checkpoint file and its checksum (a checksum without its file would only confuse)."""
    Path(path).unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_text(digest: str, path: str | Path) -> str:
    return f"{digest}  {Path(path).name}\n"


def read_sidecar(path: str | Path) -> str | None:
    """The digest recorded for ``path``; None when there is none. A damaged sidecar reads as a digest that can
    never match, so the checkpoint counts as damaged rather than unverified."""
    try:
        text = sidecar(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    fields = text.split()
    return fields[0].lower() if fields else "<empty checksum file>"


@dataclass(frozen=True)
class Verdict:
    """What a checksum check found: ``ok`` (matches), ``unverified`` (no checksum) or ``damaged``."""

    status: str
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.status != "damaged"


# (path, size, mtime_ns) -> verdict: resolving `--ckpt_path last` and loading the chosen file hash it only once.
_verified: dict[tuple[str, int, int], Verdict] = {}


def verify(path: str | Path) -> Verdict:
    """Compare a local checkpoint file with its sidecar (a folder, e.g. a sharded FSDP checkpoint, is unverified)."""
    path = Path(path)
    if path.is_dir():
        return Verdict("unverified", "a folder (sharded checkpoint) has no checksum")
    expected = read_sidecar(path)
    if expected is None:
        return Verdict("unverified", f"no {sidecar(path).name}")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        actual = sha256_file(path)
        if actual == expected:
            _verified[key] = Verdict("ok")
        else:
            _verified[key] = Verdict(
                "damaged",
                f"its sha256 is {actual[:16]}..., {sidecar(path).name} says {expected[:16]}...: the file changed "
                f"after it was written (a flipped bit, a partial copy or an edit)",
            )
    return _verified[key]


# (path, size, mtime_ns) -> the global step recorded in the checkpoint, or None when it cannot be read.
_steps: dict[tuple[str, int, int], int | None] = {}


def recorded_step(path: str | Path) -> int | None:
    """The ``global_step`` a checkpoint records, read without loading its tensors (they are memory-mapped, never
    touched), once per file version: resolving ``--ckpt_path last`` and the start-step check share the read. A
    sharded (FSDP) folder records it in its ``meta.pt`` (Lightning writes everything but the tensors there). None for
    a folder without one or a file that does not load. Only a step read from a file whose checksum verifies is
    trustworthy: a flipped bit can change it, which is why the caller verifies the file it picks."""
    path = Path(path)
    if path.is_dir():
        path = path / SHARDED_METADATA
        if not path.is_file():
            return None
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _steps:
        state = read_metadata(path)  # None: damaged or not a checkpoint; it sorts last and verify() says why
        step = state.get("global_step") if state is not None else None
        _steps[key] = int(step) if isinstance(step, int) and not isinstance(step, bool) else None
    return _steps[key]


def read_metadata(path: str | Path) -> dict | None:
    """A checkpoint's top-level dict with its tensors memory-mapped, never read (a sharded folder: its metadata
    file, which holds everything but the tensors); None for a file that does not load as a checkpoint."""
    import torch  # here, not at the top: the rest of this module is plain file handling

    path = Path(path)
    if path.is_dir():
        path = path / SHARDED_METADATA
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return state if isinstance(state, dict) else None


def _order(path: Path) -> tuple:
    """Sort key, smallest first: the highest recorded global step first; among equal steps ``last*`` before the
    step files (the name users pass around), then by name. Steps unknown (sharded folders, unreadable files) come
    after every known one, newest modification first among themselves.

    One case this order cannot tell: a run resumed on purpose from an earlier step of its own folder (say step 8
    while step000012.ckpt is there) keeps that higher-step file as `last` until its new trajectory overwrites it at
    step 12; resume such a branch into a new run folder (or move the later files away) to make it `last` at once."""
    step = recorded_step(path)
    if step is None:
        return (1, 0, -path.stat().st_mtime_ns, path.name)
    return (0, -step, not path.name.startswith("last"), path.name)


def candidates(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, newest first: by the global step each records, never by modification time, which
    a plain ``cp -r`` or a restore from backup rewrites in any order (ties: see ``_order``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.name.endswith(CHECKPOINT_SUFFIX)), key=_order)


def _refusal(path: Path, step: int | None) -> Verdict | None:
    """Why ``path`` (recording ``step``) cannot be resumed from, or None when it can."""
    verdict = verify(path)
    if not verdict.usable:
        return verdict
    if step is None and not path.is_dir():
        return Verdict("damaged", "it does not load as a checkpoint (no global step)")
    return None


def _pick(paths: list[Path]) -> tuple[Path | None, list[tuple[Path, Verdict]]]:
    """The first usable checkpoint of ``paths`` (in ``candidates`` order) with a verified one preferred over an
    unverified one of the same step; and the refused ones that are, or may be, newer than it."""
    skipped: list[tuple[Path, Verdict]] = []
    paths = sorted(paths, key=_order)
    i = 0
    while i < len(paths):
        step = recorded_step(paths[i])
        same = [paths[i]] if step is None else [p for p in paths[i:] if recorded_step(p) == step]
        i += len(same)
        usable = []
        for path in same:
            refusal = _refusal(path, step)
            if refusal is not None:
                skipped.append((path, refusal))
            else:
                usable.append((verify(path).status != "ok", path))
        if usable:
            # A file whose step cannot be read sorts after every readable one, yet it may well be the newest (a
            # damaged last.ckpt is the usual case): it is reported as skipped, not passed over in silence.
            unreadable = [p for p in paths[i:] if recorded_step(p) is None and not p.is_dir()]
            skipped += [(p, _refusal(p, None)) for p in unreadable]
            return min(usable, key=lambda u: u[0])[1], skipped  # min is stable: candidates order among equals
    return None, skipped


def newest_usable(folder: str | Path) -> tuple[Path | None, list[tuple[Path, Verdict]]]:
    """The checkpoint in ``folder`` with the highest verified global step (or, failing that, one without a checksum
    file), and the damaged ones skipped on the way."""
    return _pick(candidates(folder))


def describe_last_good(folder: str | Path | None) -> str:
    """For stop messages: the newest checkpoint that verifies, or why there is none."""
    if folder is None:
        return "none (no checkpoint folder)"
    path, skipped = newest_usable(folder)
    if path is not None:
        return str(path)
    return f"none that verifies ({len(skipped)} damaged there)" if skipped else "none saved yet"


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete temporary files that saves left behind (a kill or a full disk mid-save); return what went.

    Called at the start of a run, before anything is written, so a disk filled by a failed save has room again.
    Only rank zero calls it, for folders of runs no live process holds (lighthouse.train.run_lock), so no save is
    in progress there.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if TMP_PATTERN.fullmatch(path.name) and path.is_file():
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path)
            _warn("removed %s (%.1f MB), left behind by an interrupted save", path, size / 2**20)
    return removed


def resolve_last(folders: list[str | Path]) -> str | None:
    """``--ckpt_path last``: the checkpoint in ``folders`` with the highest global step that verifies, saying which
    damaged ones were skipped. None (train from scratch) when there is no checkpoint at all; an error when none is
    usable."""
    chosen, skipped = _pick([path for folder in folders for path in candidates(folder)])
    listing = "; ".join(f"{p.name}: {v.detail}" for p, v in skipped)
    where = ", ".join(str(f) for f in folders) or "(no checkpoint folder)"
    if chosen is None and skipped:
        raise ValueError(
            f"--ckpt_path last: no checkpoint in {where} verifies ({listing}). Pass an intact one "
            "explicitly, or omit --ckpt_path to start from scratch"
        )
    if chosen is None:
        _warn("--ckpt_path last: no checkpoint in %s yet; training starts from scratch", where)
        return None
    if skipped:
        _warn("--ckpt_path last: skipped %s. Resuming from %s, the newest checkpoint that verifies", listing, chosen)
    elif verify(chosen).status == "unverified":
        _warn("--ckpt_path last: resuming from %s, which has no checksum to verify (%s)", chosen, verify(chosen).detail)
    return str(chosen)
