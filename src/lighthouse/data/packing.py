"""The split rule, packing and ordering as pure functions: the executable specification of the training stream.

Split: a document goes to validation iff ``split_value(key) < val_fraction``, a hash of its key alone, so adding
or removing other documents never moves it. Two fallbacks keep small corpora usable (applied by build.py and
recorded in the manifest): when no document lands in validation, the train document with the smallest split
value moves there (the first to turn val as val_fraction grows); a corpus of ONE document is split by position
instead, its last ``tail_length(n, val_fraction)`` tokens becoming the validation document ``key@tail`` (a BPE tokenizer
is trained on the first ``len(text) - tail_length(len(text), val_fraction)`` characters of its text).

The packed stream of a split is its documents in corpus order, each followed by EOS::

    T = doc_0 EOS doc_1 EOS ... doc_{D-1} EOS          (N tokens; EOS belongs to the document it ends)

Windows hold ``seq_len + 1`` tokens and overlap by one token: window k is ``T[k*L : k*L + L + 1]``
(L = seq_len), so inputs ``w[:-1]`` and targets ``w[1:]`` make every token ``T[1 .. W*L]`` a target
exactly once per epoch, with W = (N - 1) // L windows. The last (N - 1) % L tokens are not targets.
Long documents are split across windows; a window may hold the end of one document and the start of
the next.

Order: the stream of windows is unbounded. Global position p (0, 1, 2, ...) holds window
``perm_e[p % W]`` with epoch e = p // W and ``perm_e`` a permutation seeded by (seed, e). Global batch g
is positions ``[start + g*B, start + (g+1)*B)``; rank r of R takes global batches r, r+R, r+2R, ...
(its local batch j is global batch j*R + r), and dataloader worker w of K produces the rank's local
batches j = w, w+K, ... . The DataLoader yields workers round-robin, so a rank sees local batches in
order 0, 1, 2, ... for any K, and resuming is a matter of moving ``start`` (in windows).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

SPLIT_RULE = "val iff int.from_bytes(sha256(key)[:8], 'big') / 2**64 < val_fraction; key = relpath or relpath#record"
TAIL_SUFFIX = "@tail"  # key of the validation piece of a one-document corpus


def split_value(key: str) -> float:
    """Uniform in [0, 1), a pure function of the document key (stable across runs, machines, corpora)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_val(key: str, val_fraction: float) -> bool:
    return split_value(key) < val_fraction


def tail_length(n: int, val_fraction: float) -> int:
    """How much of the end of a one-document corpus's document (n tokens, or characters) is validation:
    val_fraction of it, rounded, at least 1 and leaving at least 1 for training (0 when n < 2: no cut)."""
    if n < 2:
        return 0
    return min(n - 1, max(1, round(val_fraction * n)))


def assign_splits(
    docs: Iterable[tuple[str, Sequence, Any]], val_fraction: float
) -> Iterator[tuple[str, str, Sequence, Any]]:
    """(split, key, content, tag) for each (key, content, tag) of ``docs``, in order, by the split rule. A stream of
    exactly one document yields its two pieces instead (content: tokens or text, sliced; tag: passed through)."""
    docs = iter(docs)
    first = list(itertools.islice(docs, 2))  # one document or more decides the rule
    if len(first) == 1:
        key, content, tag = first[0]
        n_tail = tail_length(len(content), val_fraction)
        if n_tail:
            yield "train", key, content[: len(content) - n_tail], tag
            yield "val", key + TAIL_SUFFIX, content[len(content) - n_tail :], tag
            return
    for key, content, tag in itertools.chain(first, docs):
        yield ("val" if is_val(key, val_fraction) else "train"), key, content, tag


def pack_documents(docs: Sequence[Sequence[int]], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference packing: (stream [N] int64, doc_starts [D] int64). Shards store exactly this."""
    parts, starts, pos = [], [], 0
    for d in docs:
        starts.append(pos)
        parts.append(np.asarray(d, dtype=np.int64))
        parts.append(np.array([eos_id], dtype=np.int64))
        pos += len(d) + 1
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return stream, np.asarray(starts, dtype=np.int64)


def num_windows(n_tokens: int, seq_len: int) -> int:
    """Windows of seq_len + 1 tokens, overlapping by one, that fit in a stream of n_tokens."""
    return max(0, (n_tokens - 1) // seq_len)


def window_span(index: int, seq_len: int) -> tuple[int, int]:
    """[start, stop) of window ``index`` in the packed stream."""
    start = index * seq_len
    return start, start + seq_len + 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit seed per (seed, epoch), so nearby seeds or epochs do not give related permutations."""
    return int.from_bytes(hashlib.sha256(f"lighthouse-data:{seed}:{epoch}".encode()).digest()[:8], "little")


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the n windows in ``epoch`` (int64 [n])."""
    return np.random.Generator(np.random.PCG64(epoch_seed(seed, epoch))).permutation(n)


def local_batches(
    rank: int, world_size: int, worker: int = 0, num_workers: int = 1, num_global_batches: int | None = None
) -> Iterator[tuple[int, int]]:
    """(local batch j, global batch g) that ``worker`` of ``rank`` produces, in order.

    Unbounded (training) when ``num_global_batches`` is None: g = j * R + r. Finite (validation): every rank
    gets ceil(G / R) batches, g = (j * R + r) % G, so all ranks run the same number of steps (a collective
    in validation_step cannot hang); when R does not divide G, the first few batches are seen twice.
    """
    if num_global_batches is None:
        j = worker
        while True:
            yield j, j * world_size + rank
            j += num_workers
    n_local = -(-num_global_batches // world_size) if num_global_batches > 0 else 0
    for j in range(worker, n_local, num_workers):
        yield j, (j * world_size + rank) % num_global_batches


def evenly_spaced(n_available: int, n_wanted: int) -> np.ndarray:
    """min(n_wanted, n_available) distinct indices spread over range(n_available), in increasing order."""
    n = min(n_wanted, n_available)
    return (np.arange(n, dtype=np.int64) * n_available) // max(n, 1)
