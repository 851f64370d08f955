"""Passkey evaluation settings and the fixed prompt set they define (the format is data/passkey_format.py)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lighthouse.data.passkey_format import (
    KEY_DIGITS,
    PromptFormat,
    TokenSource,
    draw_key,
    min_length,
    read_cyclic,
    rng_for,
)


@dataclass
class PasskeyConfig:
    """Passkey evaluation, run with dense attention in every layer."""

    lengths: list[int] | None = None
    """Context lengths to test (tokens the model reads: prompt and key); None means seq_len/4, seq_len/2, seq_len."""
    depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    """Position of the key sentence as a fraction of the filler before it (0: start, 1: right before the question)."""
    samples: int = 2
    """Prompts per (length, depth) cell, each with its own key and filler."""
    key_digits: int = KEY_DIGITS
    """Digits per key (the training mix always uses KEY_DIGITS = 5)."""
    seed: int = 0
    """Chooses the keys and filler spans: the same prompts at every validation and in every run."""
    batch_tokens: int = 65536
    """Prompts of one length are batched up to this many tokens per forward."""

    def resolved_lengths(self, max_len: int) -> list[int]:
        return list(self.lengths) if self.lengths is not None else sorted({max_len // 4, max_len // 2, max_len})

    def validate(self, max_len: int, prefix: str = "model.passkey.", longer_ok: bool = False) -> None:
        """Raise ValueError naming the field; lengths may exceed ``max_len`` (the training context) if longer_ok."""
        name = functools.partial(option_name, prefix)
        if not isinstance(self.key_digits, int) or not 1 <= self.key_digits <= 18:
            raise ValueError(f"{name('key_digits')}={self.key_digits!r} must be an integer in [1, 18]")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"{name('samples')}={self.samples!r} must be an integer >= 1")
        if not isinstance(self.batch_tokens, int) or self.batch_tokens < 1:
            raise ValueError(f"{name('batch_tokens')}={self.batch_tokens!r} must be an integer >= 1")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"{name('depths')}={self.depths!r} must be a non-empty list of fractions in [0, 1]")
        lowest = min_length(self.key_digits)
        highest = 2**31 if longer_ok else max_len
        lengths = self.resolved_lengths(max_len)
        if not lengths or any(not isinstance(n, int) or not lowest <= n <= highest for n in lengths):
            raise ValueError(
                f"{name('lengths')}={lengths!r} must be a non-empty list of integers in "
                f"[{lowest}, {highest}] (a prompt needs {lowest} tokens; at most data.seq_len)"
            )


def option_name(prefix: str, field_name: str) -> str:
    """How the user wrote the field: a command-line flag (prefix "--") is spelled with hyphens (--key-digits), a
    config key (model.passkey.) with the field's underscores."""
    return prefix + (field_name.replace("_", "-") if prefix == "--" else field_name)


@dataclass(frozen=True)
class Prompt:
    cell: int  # index into the (length, depth) cells
    tokens: np.ndarray  # int64 [length + 1]


def make_prompts(
    config: PasskeyConfig, fmt: PromptFormat, filler: TokenSource, lengths: Sequence[int]
) -> tuple[list[tuple[int, float]], list[Prompt]]:
    """The evaluation cells (length, depth), length-major, and ``samples`` prompts per cell with validation keys."""
    cells = [(n, d) for n in lengths for d in config.depths]
    prompts = []
    for cell, (length, depth) in enumerate(cells):
        filler_len = length + 1 - fmt.overhead
        if filler_len < 1:
            raise ValueError(f"passkey length {length} leaves no room for filler ({fmt.overhead} tokens of fixed text)")
        for i in range(config.samples):
            rng = rng_for("eval", config.seed, length, depth, i)
            key = draw_key(rng, fmt.key_digits, validation=True)
            text = read_cyclic(filler, int(rng.integers(filler.n_tokens)), filler_len)
            prompts.append(Prompt(cell, fmt.document(key, depth, text)))
    return cells, prompts
