"""The streaming dataset: packed windows, sharded over DDP ranks and dataloader workers, resumable.

The order is specified in packing.py. The dataset yields whole batches (use ``DataLoader(batch_size=None)``)
so that a batch is the unit of sharding: local batch j of a rank comes from worker j % num_workers, and
the DataLoader's round-robin over workers returns batches in the same order for any worker count.

A ``WindowMix`` may replace training windows (e.g. by synthetic documents): it is called with each window's
global stream position, which does not depend on ranks, workers or restarts, so a mix that decides from the
position alone (and a seed) keeps every rank in agreement and a resume bitwise exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .packing import epoch_permutation, local_batches, num_windows, window_span
from .shards import SplitReader


class WindowMix(Protocol):
    """Replaces some windows of the training stream. Must be picklable (DataLoader workers get a copy)."""

    def __call__(self, position: int, window: np.ndarray) -> np.ndarray:
        """The window to train on at global stream ``position``, given the one read there (int64 [seq_len + 1]);
        return it unchanged, or another int64 array of the same length."""
        ...


class FirstMix:
    """Several mixes, the first that changes a window winning: each is asked in turn, and a mix leaves a window
    alone by returning the very array it was given (so a passkey document is never given recall pairs)."""

    def __init__(self, *mixes: WindowMix):
        self.mixes = mixes

    def __call__(self, position: int, window: np.ndarray) -> np.ndarray:
        for mix in self.mixes:
            out = mix(position, window)
            if out is not window:
                return out
        return window


def require_windows(
    split: SplitReader, seq_len: int, name: str = "the split", hint: str = "use a larger corpus"
) -> int:
    """The number of whole windows of ``seq_len + 1`` tokens in ``split``; a split too short for one is refused
    (the one check of this; the data module calls it early with the corpus settings in ``hint``)."""
    n = num_windows(split.n_tokens, seq_len)
    if n == 0:
        raise ValueError(
            f"{name} has {split.n_tokens} tokens ({split.n_documents} documents), fewer than seq_len + 1 = "
            f"{seq_len + 1}: lower seq_len or {hint}"
        )
    return n


class PackedWindows(IterableDataset):
    """Batches ``{"tokens": LongTensor[B, seq_len + 1]}`` from one split.

    Args:
        split: the packed stream to read.
        seq_len: tokens per training sequence; windows hold seq_len + 1.
        batch_size: windows per batch (per rank).
        rank, world_size: this process's place among the data-parallel ranks.
        seed: fixes the window order; each epoch (pass over all windows) is reshuffled.
        windows: a fixed list of window indices to serve in order, once (validation); ``None`` serves the
            unbounded shuffled stream (training).
        start_window: global stream position to start from (resume); windows before it are skipped.
        mix: replaces windows by position (training only; see WindowMix).
    """

    def __init__(
        self,
        split: SplitReader,
        *,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        windows: Sequence[int] | None = None,
        start_window: int = 0,
        mix: WindowMix | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.split = split
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.windows = None if windows is None else np.asarray(windows, dtype=np.int64)
        self.start_window = start_window
        self.mix = mix
        self.num_windows = require_windows(split, seq_len)
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, permutation) cache

    @property
    def num_global_batches(self) -> int | None:
        """Batches over all ranks (fixed windows), or None for the unbounded stream."""
        return None if self.windows is None else len(self.windows) // self.batch_size

    def num_local_batches(self) -> int:
        """Batches this rank yields (fixed windows): the same on every rank (packing.local_batches). Not
        ``__len__``: Lightning warns about a sized IterableDataset read by several workers."""
        if self.windows is None:
            raise TypeError("the training stream is unbounded")
        return -(-self.num_global_batches // self.world_size)

    def window_at(self, position: int) -> int:
        """Window index at a global stream position."""
        if self.windows is not None:
            return int(self.windows[position])
        epoch, i = divmod(position, self.num_windows)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.num_windows, self.seed, epoch))
        return int(self._perm[1][i])

    def batch(self, global_batch: int, start_window: int | None = None) -> dict[str, torch.Tensor]:
        """Global batch ``global_batch`` of the stream that starts at ``start_window``."""
        start = self.start_window if start_window is None else start_window
        first = start + global_batch * self.batch_size
        tokens = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)  # [B, L + 1]
        for b in range(self.batch_size):
            tokens[b] = self.window(first + b)
        return {"tokens": torch.from_numpy(tokens)}

    def window(self, position: int) -> np.ndarray:
        """The tokens (int64 [seq_len + 1]) served at global stream ``position``, after the mix if any."""
        window = self.split.read(*window_span(self.window_at(position), self.seq_len))
        if self.mix is None:
            return window
        mixed = self.mix(position, window)
        if mixed.shape != window.shape:
            raise ValueError(f"the window mix returned shape {mixed.shape} at position {position}, not {window.shape}")
        return mixed

    def iter_batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, torch.Tensor]]:
        # start is read now, not at the first next(): the datamodule moves it for the *next* iteration.
        start = self.start_window
        jobs = local_batches(self.rank, self.world_size, worker, num_workers, self.num_global_batches)
        return (self.batch(g, start) for _, g in jobs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is None:
            return self.iter_batches()
        return self.iter_batches(info.id, info.num_workers)
