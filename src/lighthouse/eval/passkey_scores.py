"""Scoring passkey prompts with one teacher-forced forward each, and the scores per (length, depth) cell.

Scoring teacher-forces the true key: greedy decoding reproduces the key exactly iff the argmax over the vocabulary
at every key position is the true next digit, so one forward gives the greedy exact match. ``digit accuracy``
takes the argmax over the ten digit tokens only: a model that ignores the prompt scores 0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lighthouse.data.passkey_format import PromptFormat
from lighthouse.eval.passkey_prompts import Prompt
from lighthouse.eval.positions import short_length

DIGIT_CHANCE = 0.1
LogitsFn = Callable[[Tensor], Tensor]  # inputs [B, N] -> logits [B, N, V]


def score_answers(logits: Tensor, targets: Tensor, digit_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[B, K, V]`` at the K key positions and the key ``[B, K]`` -> (exact ``[B]``: greedy decoding
    gives every digit, digits_correct ``[B]``: positions where the most likely of the ten digit tokens is right)."""
    exact = (logits.argmax(-1) == targets).all(-1)
    best_digit = digit_ids[logits[..., digit_ids].argmax(-1)]  # [B, K]
    return exact, (best_digit == targets).sum(-1)


def _rank_batches(
    prompts: list[Prompt], batch_tokens: int, rank: int, world_size: int
) -> Iterator[tuple[list[Prompt], list[bool]]]:
    """This rank's batches of same-length prompts (prompt i of a length goes to rank i % world_size) and which of
    their rows count. Every rank runs the same number of forwards, padding with uncounted rows where the prompts
    do not divide evenly: a sharded model gathers its weights inside each forward, on all ranks together."""
    by_length: dict[int, list[Prompt]] = {}
    for p in prompts:
        by_length.setdefault(len(p.tokens), []).append(p)
    for length, group in by_length.items():
        share = -(-len(group) // world_size)
        mine = group[rank::world_size]
        rows, counted = mine + [group[0]] * (share - len(mine)), [True] * len(mine) + [False] * (share - len(mine))
        size = max(1, batch_tokens // length)
        for i in range(0, share, size):
            yield rows[i : i + size], counted[i : i + size]


@torch.no_grad()
def evaluate(
    logits_fn: LogitsFn,
    prompts: list[Prompt],
    n_cells: int,
    fmt: PromptFormat,
    device: torch.device,
    batch_tokens: int = 65536,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """Counts ``[n_cells, 3]`` (exact hits, digit hits, prompts) over this rank's share of the prompts; sum them
    over ranks for the totals."""
    counts = torch.zeros(n_cells, 3, dtype=torch.float64, device=device)
    digit_ids = torch.as_tensor(fmt.digit_ids, device=device)
    k = fmt.key_digits
    for batch, counted in _rank_batches(prompts, batch_tokens, rank, world_size):
        tokens = torch.as_tensor(np.stack([p.tokens for p in batch]), device=device)  # [B, length + 1]
        logits = logits_fn(tokens[:, :-1])  # [B, length, V]; position t predicts token t + 1
        exact, digits = score_answers(logits[:, -k:].float(), tokens[:, -k:], digit_ids)
        weight = torch.as_tensor(counted, dtype=torch.float64, device=device)
        cells = torch.as_tensor([p.cell for p in batch], device=device)
        counts.index_add_(
            0, cells, torch.stack([exact.double(), digits.double(), torch.ones_like(weight)], 1) * weight[:, None]
        )
    return counts


@dataclass
class PasskeyScores:
    """Summed counts per (length, depth) cell, with accuracies by cell, by length and overall."""

    cells: list[tuple[int, float]]
    counts: np.ndarray  # [n_cells, 3]: exact hits, digit hits, prompts
    key_digits: int

    def _acc(self, rows: np.ndarray) -> tuple[float, float]:
        exact, digits, n = self.counts[rows].sum(0)
        return float(exact / n), float(digits / (n * self.key_digits))

    def accuracy(self, length: int | None = None) -> tuple[float, float]:
        """(exact match, digit accuracy) over all cells or those of one length."""
        return self._acc(np.array([length is None or n == length for n, _ in self.cells]))

    @property
    def lengths(self) -> list[int]:
        return sorted({n for n, _ in self.cells})

    @property
    def depths(self) -> list[float]:
        return sorted({d for _, d in self.cells})

    def metrics(self, prefix: str = "val/") -> dict[str, float]:
        exact, digit = self.accuracy()
        out = {f"{prefix}passkey_acc": exact, f"{prefix}passkey_digit_acc": digit}
        for n in self.lengths:
            out[f"{prefix}passkey_acc/{short_length(n)}"], out[f"{prefix}passkey_digit_acc/{short_length(n)}"] = (
                self.accuracy(n)
            )
        for i, (n, d) in enumerate(self.cells):
            out[f"{prefix}passkey_cell/{short_length(n)}_d{round(100 * d):02d}"] = self._acc(np.array([i]))[0]
        return out

    def as_dict(self) -> dict:
        exact, digit = self.accuracy()
        grid = {
            f"{n}@{d}": dict(zip(("exact", "digit_acc"), self._acc(np.array([i])), strict=True))
            for i, (n, d) in enumerate(self.cells)
        }
        return {
            "exact": exact,
            "digit_acc": digit,
            "digit_chance": DIGIT_CHANCE,
            "key_digits": self.key_digits,
            "prompts": int(self.counts[:, 2].sum()),
            "lengths": self.lengths,
            "depths": self.depths,
            "cells": grid,
        }

    def table(self) -> str:
        """Markdown: exact match (digit accuracy) per length (rows) and depth (columns)."""
        lines = [
            "| length | " + " | ".join(f"depth {d:g}" for d in self.depths) + " | all |",
            "|---" * (len(self.depths) + 2) + "|",
        ]
        index = {cell: i for i, cell in enumerate(self.cells)}
        for n in self.lengths:
            row = ["{:.2f} ({:.2f})".format(*self._acc(np.array([index[(n, d)]]))) for d in self.depths]
            lines.append(f"| {n} | " + " | ".join(row) + " | {:.2f} ({:.2f}) |".format(*self.accuracy(n)))
        return "\n".join(lines)
