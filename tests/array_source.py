"""A token stream held in memory, for the passkey and recall tests: the TokenSource interface
(lighthouse.data.passkey_format) that a split's SplitReader serves from disk."""

from __future__ import annotations

import numpy as np


class ArraySource:
    def __init__(self, tokens):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.n_tokens = len(self.tokens)

    def read(self, start, stop):
        return self.tokens[start:stop]
