"""Checkpoints that are either complete or absent: write a temporary file, fsync, rename over the target.

A process killed mid-write leaves only a ``*.tmp-<pid>`` file behind, never a truncated ``last.ckpt``; the
fsyncs make the rename survive a power loss too. Stale temporary files are removed at the next save.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local-disk checkpoint IO with all-or-nothing writes (use as ``trainer.plugins``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f"{target.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            self.write(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def write(self, checkpoint: dict[str, Any], f) -> None:
        """Serialise into an open file; the one place a test can slow the write down."""
        torch.save(checkpoint, f)
