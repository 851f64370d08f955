"""Helpers for the data tests: small generated corpora (unique windows, multi-byte characters, long documents),
a quiet byte-tokenizer build, and a loader reader that shuts its workers down."""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

from lighthouse.data.build import Selection
from lighthouse.data.cache import prepare
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.tokenizer import parse_tokenizer_spec

BYTE = parse_tokenizer_spec("byte")

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


def build(corpus, data_dir, val_fraction=0.2, max_documents=None, max_bytes=None, **kw):
    """prepare() of a local corpus with the byte tokenizer, in-process, without a progress bar."""
    kw = {"num_proc": 1, "progress": False, **kw}
    return prepare(resolve_corpus(str(corpus)), BYTE, data_dir, Selection(val_fraction, max_documents, max_bytes), **kw)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
