"""The passkey document format and its keys: shared by the training mix (data/passkey_mix.py) and the
evaluation (eval/passkey*.py), so that both read and write exactly the same documents.

A document (training) or prompt (evaluation) of ``length + 1`` tokens is::

    filler[:a]  NEEDLE(key)  filler[a:]  QUESTION  key

with ``a = round(depth * len(filler))``. The model reads the first ``length`` tokens and must predict the key's
digits at the end.

Tokenizers: the fixed text pieces, the filler and each digit are tokenized separately and concatenated, so every
key digit is exactly one token the scorer knows (a byte-level BPE would otherwise merge "71" into one token at
some positions and not at others). The filler is a span of an already tokenized split, read as is.

Keys: ``key_digits`` decimal digits. A key belongs to the validation set iff a hash of it falls below
``VALIDATION_KEY_SHARE``; training documents draw only the other keys, so the two sets are disjoint by
construction and the split looks random to a model (no digit pattern tells them apart).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

VALIDATION_KEY_SHARE = 0.1
NEEDLE = ("\nThe pass key is ", ". Remember it. ", " is the pass key.\n")  # text around the key's two copies
QUESTION = "\nWhat is the pass key? The pass key is "
KEY_DIGITS = 5  # evaluation default, and the key length of the training mix (data/passkey_mix.py)


class Encoder(Protocol):
    def encode(self, text: str) -> np.ndarray: ...


class TokenSource(Protocol):
    """A split's packed token stream (lighthouse.data's SplitReader is one)."""

    n_tokens: int

    def read(self, start: int, stop: int) -> np.ndarray: ...


# ---- keys and randomness ----------------------------------------------------------------------------------
def rng_for(*parts: object) -> np.random.Generator:
    """A generator seeded by a hash of ``parts``: the same parts give the same draws on every rank and worker."""
    digest = hashlib.sha256(":".join(["lighthouse-passkey", *map(str, parts)]).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def is_validation_key(key: str) -> bool:
    digest = hashlib.sha256(f"lighthouse-passkey-key:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_KEY_SHARE


def draw_key(rng: np.random.Generator, digits: int, validation: bool) -> str:
    """A uniformly random key of ``digits`` digits (leading zeros kept) from the validation or the training set."""
    while True:
        key = "".join(str(d) for d in rng.integers(0, 10, size=digits))
        if is_validation_key(key) == validation:
            return key


def read_cyclic(source: TokenSource, start: int, n: int) -> np.ndarray:
    """``n`` tokens of the stream from ``start``, wrapping around at its end (int64 [n])."""
    out = np.empty(n, dtype=np.int64)
    done = 0
    while done < n:
        pos = (start + done) % source.n_tokens
        take = min(n - done, source.n_tokens - pos)
        out[done : done + take] = source.read(pos, pos + take)
        done += take
    return out


# ---- documents ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptFormat:
    """Token ids of the fixed pieces of a passkey document, each piece encoded on its own."""

    needle: tuple[np.ndarray, np.ndarray, np.ndarray]  # text before, between and after the key's two copies
    question: np.ndarray
    digit_ids: np.ndarray  # [10]: the token of "0" .. "9"
    key_digits: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Encoder, key_digits: int) -> PromptFormat:
        digit_ids = []
        for d in range(10):
            ids = np.asarray(tokenizer.encode(str(d)), dtype=np.int64)
            if ids.shape != (1,):
                raise ValueError(
                    f"the tokenizer encodes the digit {d!r} as {len(ids)} tokens; the passkey test "
                    f"needs one token per digit"
                )
            digit_ids.append(int(ids[0]))

        def encode(text: str) -> np.ndarray:
            return np.asarray(tokenizer.encode(text), dtype=np.int64)

        return cls(tuple(encode(t) for t in NEEDLE), encode(QUESTION), np.asarray(digit_ids), key_digits)

    @property
    def overhead(self) -> int:
        """Tokens of a document that are not filler: needle (two key copies), question and the answer."""
        return sum(len(p) for p in self.needle) + len(self.question) + 3 * self.key_digits

    def key_tokens(self, key: str) -> np.ndarray:
        return self.digit_ids[[int(c) for c in key]]

    def document(self, key: str, depth: float, filler: np.ndarray) -> np.ndarray:
        """filler[:a] + needle + filler[a:] + question + key, ``len(filler) + overhead`` tokens (int64)."""
        k = self.key_tokens(key)
        before, between, after = self.needle
        a = needle_offset(depth, len(filler))
        return np.concatenate([filler[:a], before, k, between, k, after, filler[a:], self.question, k])


def needle_offset(depth: float, filler_len: int) -> int:
    return int(round(depth * filler_len))


def min_length(key_digits: int) -> int:
    """The shortest context that holds a prompt with a few tokens of filler."""
    text = sum(len(t.encode()) for t in (*NEEDLE, QUESTION))  # a byte upper bound for any tokenizer
    return text + 3 * key_digits + 16
