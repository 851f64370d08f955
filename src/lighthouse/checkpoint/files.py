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


def candidates(folder: str | Path) -> list[Path]:
    """Checkpoints in ``folder``, newest first (by modification time; ``last*`` first among equals)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.endswith(CHECKPOINT_SUFFIX)]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name.startswith("last")), reverse=True)


def newest_usable(folder: str | Path) -> tuple[Path | None, list[tuple[Path, Verdict]]]:
    """The newest checkpoint in ``folder`` that verifies (or has no checksum), and the damaged ones skipped."""
    skipped = []
    for path in candidates(folder):
        verdict = verify(path)
        if verdict.usable:
            return path, skipped
        skipped.append((path, verdict))
    return None, skipped


def describe_last_good(folder: str | Path | None) -> str:
    """For stop messages: the newest checkpoint that verifies, or why there is none."""
    if folder is None:
        return "none (no checkpoint folder)"
    path, _ = newest_usable(folder)
    return str(path) if path is not None else "none saved yet"


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete temporary files that saves left behind (a kill or a full disk mid-save); return what went.

    Called once at the start of a run, before anything is written, so a disk filled by a failed save has room
    again. Only rank zero calls it, and only one job writes a checkpoint folder, so no save is in progress.
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
    """``--ckpt_path last``: the newest checkpoint in ``folders`` that verifies, saying which damaged ones were
    skipped. None (train from scratch) when there is no checkpoint at all; an error when none is usable."""
    chosen: Path | None = None
    skipped: list[tuple[Path, Verdict]] = []
    for folder in folders:
        path, damaged = newest_usable(folder)
        skipped += damaged
        if path is not None and (chosen is None or path.stat().st_mtime_ns > chosen.stat().st_mtime_ns):
            chosen = path
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
