"""Training-stream option: a fraction of training windows replaced by synthetic passkey documents.

Whether global stream position p holds a passkey document, and what the document holds (a training key, a
depth, a span of train-split filler), follows from (seed, p) alone: every rank and dataloader worker agrees
without communicating, and a resumed run, which restarts the stream at the first unseen position, sees exactly
the windows an uninterrupted run would. A replaced window is ``seq_len + 1`` tokens, like the one it replaces,
with the key's digits as its last tokens (lighthouse/passkey.py has the layout). Validation windows are never
replaced: the passkey test is evaluated on its own, with validation keys and filler.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from lighthouse.passkey import KEY_DIGITS, Encoder, PromptFormat, TokenSource, draw_key, read_cyclic, rng_for

from .stream import PackedWindows


def check_fraction(fraction: float) -> None:
    ok = isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0.0 <= fraction <= 1.0
    if not ok:
        raise ValueError(f"passkey_fraction={fraction!r} is invalid: it must be a number in [0, 1] (0 = no passkey "
                         f"documents)")


class PasskeyMix:
    """Which stream positions become passkey documents, and their tokens."""

    def __init__(self, fraction: float, fmt: PromptFormat, seq_len: int, seed: int):
        check_fraction(fraction)
        self.fraction, self.format, self.seq_len, self.seed = float(fraction), fmt, seq_len, seed
        self.filler_len = seq_len + 1 - fmt.overhead
        if self.filler_len < 1:
            raise ValueError(f"seq_len={seq_len} is too short for passkey documents (passkey_fraction="
                             f"{fraction}): they need more than {fmt.overhead - 1} tokens")

    def document(self, position: int, filler: TokenSource) -> np.ndarray | None:
        """The passkey document (int64 [seq_len + 1]) at global stream ``position``, or None for a normal window."""
        rng = rng_for("train", self.seed, position)
        if rng.random() >= self.fraction:
            return None
        key = draw_key(rng, self.format.key_digits, validation=False)
        depth = rng.random()
        text = read_cyclic(filler, int(rng.integers(filler.n_tokens)), self.filler_len)
        return self.format.document(key, depth, text)


class PasskeyMixedWindows(PackedWindows):
    """The training stream with the windows that ``mix`` chooses replaced by passkey documents."""

    def __init__(self, split, *, mix: PasskeyMix, **kwargs):
        super().__init__(split, **kwargs)
        self.mix = mix

    def batch(self, global_batch: int, start_window: int | None = None) -> dict[str, torch.Tensor]:
        out = super().batch(global_batch, start_window)
        first = (self.start_window if start_window is None else start_window) + global_batch * self.batch_size
        for b in range(self.batch_size):
            doc = self.mix.document(first + b, self.split)
            if doc is not None:
                out["tokens"][b] = torch.from_numpy(doc)
                if "doc_ids" in out:
                    out["doc_ids"][b] = -1  # a synthetic document, not one of the split's
        return out


def training_windows(fraction: float, tokenizer: Encoder, seq_len: int, seed: int):
    """The class (or partial) that builds the training stream: PackedWindows itself when ``fraction`` is 0."""
    if fraction == 0:
        return PackedWindows
    fmt = PromptFormat.from_tokenizer(tokenizer, KEY_DIGITS)
    return partial(PasskeyMixedWindows, mix=PasskeyMix(fraction, fmt, seq_len, seed))
