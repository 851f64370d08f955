"""Training-stream option: a fraction of training windows replaced by synthetic passkey documents.

Whether global stream position p holds a passkey document, and what the document holds (a training key, a
depth, a span of train-split filler), follows from (seed, p) alone: every rank and dataloader worker agrees
without communicating, and a resumed run, which restarts the stream at the first unseen position, sees exactly
the windows an uninterrupted run would. A replaced window is ``seq_len + 1`` tokens, like the one it replaces,
with the key's digits as its last tokens (lighthouse/eval/passkey.py has the layout). Validation windows are never
replaced: the passkey test is evaluated on its own, with validation keys and filler.
"""

from __future__ import annotations

import numpy as np

from .passkey_format import KEY_DIGITS, Encoder, PromptFormat, TokenSource, draw_key, read_cyclic, rng_for


class PasskeyMix:
    """A ``WindowMix`` (stream.py): which stream positions become passkey documents, and their tokens.

    ``filler`` is the train split the documents take their filler text from; it is picklable, so DataLoader
    workers get their own copy of the mix.
    """

    def __init__(self, fraction: float, fmt: PromptFormat, seq_len: int, seed: int, filler: TokenSource):
        self.fraction, self.format, self.seq_len, self.seed = float(fraction), fmt, seq_len, seed
        self.filler = filler
        self.filler_len = seq_len + 1 - fmt.overhead
        if self.filler_len < 1:
            raise ValueError(
                f"seq_len={seq_len} is too short for passkey documents (passkey_fraction="
                f"{fraction}): they need more than {fmt.overhead - 1} tokens"
            )

    def document(self, position: int) -> np.ndarray | None:
        """The passkey document (int64 [seq_len + 1]) at global stream ``position``, or None for a normal window."""
        rng = rng_for("train", self.seed, position)
        if rng.random() >= self.fraction:
            return None
        key = draw_key(rng, self.format.key_digits, validation=False)
        depth = rng.random()
        text = read_cyclic(self.filler, int(rng.integers(self.filler.n_tokens)), self.filler_len)
        return self.format.document(key, depth, text)

    def __call__(self, position: int, window: np.ndarray) -> np.ndarray:
        doc = self.document(position)
        return window if doc is None else doc


def passkey_mix(fraction: float, tokenizer: Encoder, seq_len: int, seed: int, filler: TokenSource) -> PasskeyMix | None:
    """The training stream's mix for ``fraction`` (None when it is 0: the corpus is served unchanged)."""
    if fraction == 0:
        return None
    fmt = PromptFormat.from_tokenizer(tokenizer, KEY_DIGITS)
    return PasskeyMix(fraction, fmt, seq_len, seed, filler)
