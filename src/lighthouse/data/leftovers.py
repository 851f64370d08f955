"""Shard builds that a kill interrupted: their temporary folders are removed by the next build in the same place.

``build_shards`` writes into ``.<name>.tmp-<pid>-<id>/`` beside the final folder and renames it into place at the
end; a damaged folder is renamed to ``.<name>.damaged-<pid>-<id>/`` and deleted. A kill during tokenization (or
during that deletion) left these folders, as large as the shards, for good. A builder holds an ``flock`` on
``<tmp folder>.lock`` from before it creates its folder until it has renamed it, so a folder whose lock can be taken
is one whose builder is gone (the kernel drops the lock of a dead process), on this machine or, where the shared
filesystem forwards locks (NFS), another. A set-aside damaged folder is only ever deleted, so deleting it twice is
harmless and needs no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_LEFTOVER = re.compile(r"\..+\.(tmp|damaged)-\d+-[0-9a-f]{8}")
LOCK_SUFFIX = ".lock"


def hold_build_lock(tmp: Path) -> int:
    """Take the lock of the build folder ``tmp`` (call before creating it); returns the descriptor to release."""
    fd = os.open(f"{tmp}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh name: nobody else waits on it
    return fd


def release_build_lock(tmp: Path, fd: int) -> None:
    Path(f"{tmp}{LOCK_SUFFIX}").unlink(missing_ok=True)
    os.close(fd)


def _builder_gone(folder: Path) -> int | None:
    """The lock of ``folder``'s build when its builder is gone (the caller releases it), else None."""
    fd = os.open(f"{folder}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_abandoned_builds(shards: Path) -> list[Path]:
    """Delete what killed builds left in ``shards`` (the folder that holds the shard folders); return it."""
    if not shards.is_dir():
        return []
    removed = []
    for path in sorted(shards.iterdir()):
        match = _LEFTOVER.fullmatch(path.name)
        if match is None or not path.is_dir():
            continue
        if match.group(1) == "tmp":
            fd = _builder_gone(path)
            if fd is None:
                continue  # a build in progress
            shutil.rmtree(path, ignore_errors=True)
            release_build_lock(path, fd)
        else:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.warning("removed %s, left behind by an interrupted shard build", path)
    for lock in shards.glob(f".*{LOCK_SUFFIX}"):  # a builder killed between taking its lock and making its folder
        folder = Path(str(lock)[: -len(LOCK_SUFFIX)])
        if _LEFTOVER.fullmatch(folder.name) and not folder.exists():
            fd = _builder_gone(folder)
            if fd is not None and not folder.exists():
                release_build_lock(folder, fd)
            elif fd is not None:
                os.close(fd)
    return removed
