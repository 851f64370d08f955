"""Small generated corpora for the data tests: unique windows, some multi-byte characters, long documents."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "ha", "jo", "é", "ß", "中", "🙂"]


def make_text(rng: random.Random, n_words: int) -> str:
    """Pseudo-words with a few multi-byte characters: windows of it are unique, bytes are not all ASCII."""
    words = ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n_words))
    return " ".join(words) + "\n"


def write_corpus(folder: Path, sizes: list[int], seed: int = 0, prefix: str = "doc") -> Path:
    """One .txt document per entry of ``sizes`` (in words; 0 writes an empty file)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes):
        (folder / f"{prefix}_{i:03d}.txt").write_text(make_text(rng, n) if n else "", encoding="utf-8")
    return folder


# 40 documents: mostly short, a few long ones that span several windows at seq_len 64.
SIZES = [
    3,
    40,
    7,
    300,
    12,
    1,
    25,
    90,
    5,
    600,
    33,
    2,
    18,
    70,
    4,
    150,
    9,
    11,
    45,
    8,
    6,
    27,
    3,
    500,
    14,
    60,
    2,
    19,
    35,
    7,
    80,
    5,
    240,
    13,
    3,
    41,
    16,
    9,
    120,
    22,
]


def take(loader, n):
    """The first n batches of a loader; its workers are shut down here rather than left to the garbage
    collector (which takes 5 s per worker to reap a DataLoader iterator)."""
    it = iter(loader)
    try:
        return list(itertools.islice(it, n))
    finally:
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
