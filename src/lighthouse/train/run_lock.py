"""One process per run folder: ``<run>/run.lock``, held with ``flock`` for as long as a launch uses the folder.

Two ``--ckpt_path last`` resumes of one run started together used to both train into the same folder (two event
files for the same steps, ``last-v1.ckpt`` ...). The lock is an ``flock`` on an open file, so the kernel drops it
when its process dies however it dies (SIGKILL, OOM, a power cut on the machine): a crash can never leave it held,
and nothing has to guess whether a recorded pid is stale. The file's text (pid, host, start time, command) is only
there to name the holder in the refusal. On NFS ``flock`` is forwarded to the server's locks (Linux >= 2.6.12).

The holder deletes the file when it lets go. A launch that opened the file just before that deletion may then get
the lock of a file that no longer has the name, so after locking it checks that the name still leads to the file it
locked, and tries again otherwise.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "run.lock"


class RunInUse(ValueError):
    """Another live process holds the run folder (a ValueError: train.py reports it in one line, exit 2)."""


@dataclass
class RunLock:
    path: Path
    fd: int

    def release(self) -> None:
        """Delete the lock file, then drop the lock (closing is what drops it). Safe to call twice."""
        if self.fd < 0:
            return
        try:
            if _same_file(self.path, self.fd):
                self.path.unlink()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def _same_file(path: Path, fd: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def describe_holder(run: str | os.PathLike) -> str:
    try:
        text = (Path(run) / LOCK_NAME).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its name yet)"


def try_lock(run: str | os.PathLike) -> RunLock | None:
    """Take the lock of ``run`` (an existing folder) and write this process's name into it; None when a live
    process holds it. Opening an existing lock file writes nothing: a refused launch leaves the folder as it was."""
    path = Path(run) / LOCK_NAME
    for _ in range(100):  # each retry means a holder let go in between; more than a few never happen
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if not _same_file(path, fd):  # the holder deleted it between our open and our lock
            os.close(fd)
            continue
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(sys.argv)[:300]
        text = f"pid {os.getpid()} on {socket.gethostname()}, since {since}: {command}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        return RunLock(path, fd)
    raise RuntimeError(f"could not take {path}: it kept being replaced")


def lock_run(run: str | os.PathLike) -> RunLock:
    """``try_lock`` or a ``RunInUse`` naming the holder."""
    lock = try_lock(run)
    if lock is None:
        raise RunInUse(
            f"run folder {run} is in use by {describe_holder(run)}. One process trains a run at a time: wait for "
            f"that one to finish or stop it (the lock goes with its process, even after a crash), then resume"
        )
    return lock
