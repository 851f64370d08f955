"""Passkey retrieval test: a key hidden at a chosen depth of real filler text, scored with one forward per prompt.

A document (training) or prompt (evaluation) of ``length + 1`` tokens is::

    filler[:a]  NEEDLE(key)  filler[a:]  QUESTION  key

with ``a = round(depth * len(filler))``. The model reads the first ``length`` tokens and must predict the key's
digits at the end. Scoring teacher-forces the true key: greedy decoding reproduces the key exactly iff the argmax
over the vocabulary at every key position is the true next digit, so one forward gives the greedy exact match.
``digit accuracy`` takes the argmax over the ten digit tokens only: a model that ignores the prompt scores 0.1.

Tokenizers: the fixed text pieces, the filler and each digit are tokenized separately and concatenated, so every
key digit is exactly one token the scorer knows (a byte-level BPE would otherwise merge "71" into one token at
some positions and not at others). The filler is a span of an already tokenized split, read as is.

Keys: ``key_digits`` decimal digits. A key belongs to the validation set iff a hash of it falls below
``VALIDATION_KEY_SHARE``; training documents draw only the other keys, so the two sets are disjoint by
construction and the split looks random to a model (no digit pattern tells them apart).

Run on a checkpoint: ``python -m lighthouse.passkey --ckpt PATH [--lengths 8192 32768] [--depths 0.1 0.5 0.9]``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

VALIDATION_KEY_SHARE = 0.1
NEEDLE = ("\nThe pass key is ", ". Remember it. ", " is the pass key.\n")  # text around the key's two copies
QUESTION = "\nWhat is the pass key? The pass key is "
DIGIT_CHANCE = 0.1
KEY_DIGITS = 5  # evaluation default, and the key length of the training mix (data/passkey_mix.py)

LogitsFn = Callable[[Tensor], Tensor]  # inputs [B, N] -> logits [B, N, V]


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


# ---- evaluation settings and prompts ----------------------------------------------------------------------
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
        if not isinstance(self.key_digits, int) or not 1 <= self.key_digits <= 18:
            raise ValueError(f"{prefix}key_digits={self.key_digits!r} must be an integer in [1, 18]")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"{prefix}samples={self.samples!r} must be an integer >= 1")
        if not isinstance(self.batch_tokens, int) or self.batch_tokens < 1:
            raise ValueError(f"{prefix}batch_tokens={self.batch_tokens!r} must be an integer >= 1")
        if not self.depths or any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"{prefix}depths={self.depths!r} must be a non-empty list of fractions in [0, 1]")
        lowest = min_length(self.key_digits)
        highest = 2**31 if longer_ok else max_len
        lengths = self.resolved_lengths(max_len)
        if not lengths or any(not isinstance(n, int) or not lowest <= n <= highest for n in lengths):
            raise ValueError(
                f"{prefix}lengths={lengths!r} must be a non-empty list of integers in "
                f"[{lowest}, {highest}] (a prompt needs {lowest} tokens; at most data.seq_len)"
            )


def min_length(key_digits: int) -> int:
    """The shortest context that holds a prompt with a few tokens of filler."""
    text = sum(len(t.encode()) for t in (*NEEDLE, QUESTION))  # a byte upper bound for any tokenizer
    return text + 3 * key_digits + 16


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


# ---- scoring ------------------------------------------------------------------------------------------------
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


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


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
            out[f"{prefix}passkey_acc/{_short(n)}"], out[f"{prefix}passkey_digit_acc/{_short(n)}"] = self.accuracy(n)
        for i, (n, d) in enumerate(self.cells):
            out[f"{prefix}passkey_cell/{_short(n)}_d{round(100 * d):02d}"] = self._acc(np.array([i]))[0]
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


# ---- running on a model ---------------------------------------------------------------------------------------
@contextmanager
def dense_eager(model: torch.nn.Module) -> Iterator[None]:
    """Every layer dense SDPA and compiled blocks run eagerly, for evaluation forwards; restores the backends.

    Eager because these forwards are few and change backend and shape: each variant would otherwise trigger a
    recompilation of the blocks that costs more than the forwards themselves."""
    saved = model.attention_backends
    model.set_attention_backend("sdpa")
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        for layer, name in zip(model.layers, saved, strict=True):
            layer.attention.backend = name


class PasskeyEval:
    """The fixed prompt set of one configuration, and its evaluation on a model."""

    def __init__(self, config: PasskeyConfig, tokenizer: Encoder, filler: TokenSource, max_len: int):
        self.config = config
        self.format = PromptFormat.from_tokenizer(tokenizer, config.key_digits)
        self.cells, self.prompts = make_prompts(config, self.format, filler, config.resolved_lengths(max_len))

    def run(
        self,
        logits_fn: LogitsFn,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> PasskeyScores:
        counts = evaluate(
            logits_fn, self.prompts, len(self.cells), self.format, device, self.config.batch_tokens, rank, world_size
        )
        if reduce_sum is not None:
            counts = reduce_sum(counts)
        return PasskeyScores(self.cells, counts.cpu().numpy(), self.config.key_digits)


def split_reader(datamodule, split: str) -> TokenSource:
    """The token stream of a data module's 'train' or 'val' split (the one place that knows the module's API)."""
    dataset = datamodule.val_dataset() if split == "val" else datamodule.train_dataset()
    return dataset.split


# ---- command line: any checkpoint -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> PasskeyScores:
    parser = argparse.ArgumentParser(prog="python -m lighthouse.passkey", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a .ckpt written by training")
    parser.add_argument("--lengths", type=int, nargs="+", help="default: the training seq_len /4, /2, /1")
    parser.add_argument("--depths", type=float, nargs="+", default=PasskeyConfig().depths)
    parser.add_argument("--samples", type=int, default=8, help="prompts per (length, depth) cell")
    parser.add_argument("--key-digits", type=int, default=PasskeyConfig().key_digits)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="where the run's data module keeps its shards (default: as trained)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the scores to this file")
    args = parser.parse_args(argv)
    from lighthouse.checkpoint_read import dense_model, read_checkpoint
    from lighthouse.data.datamodule import LMDataModule

    device = torch.device(args.device)
    ckpt = read_checkpoint(args.ckpt, mmap=True)  # verified, weights_only; a sharded folder gets the command
    model = dense_model(ckpt).to(device)
    # The run's data settings (Lightning also stores its own keys there, e.g. _instantiator: not arguments).
    accepted = inspect.signature(LMDataModule).parameters
    data_args = {k: v for k, v in ckpt["datamodule_hyper_parameters"].items() if k in accepted}
    data_args["progress"] = False
    if args.data_dir:
        data_args["data_dir"] = args.data_dir
    datamodule = LMDataModule(**data_args)
    datamodule.setup("validate")
    config = PasskeyConfig(args.lengths, args.depths, args.samples, args.key_digits, args.seed)
    config.validate(model.config.max_seq_len, prefix="", longer_ok=True)  # RoPE extends past the training length
    evaluator = PasskeyEval(config, datamodule.tokenizer, split_reader(datamodule, "val"), model.config.max_seq_len)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    with dense_eager(model), autocast:
        scores = evaluator.run(model, device)
    print(
        f"passkey, {args.ckpt} (step {ckpt.get('global_step')}), dense attention; "
        f"exact match (digit accuracy, chance {DIGIT_CHANCE}):"
    )
    print(scores.table())
    print("all: exact {:.3f}, digit accuracy {:.3f}".format(*scores.accuracy()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ckpt": args.ckpt, "global_step": ckpt.get("global_step"), **scores.as_dict()}, f, indent=1)
    return scores


if __name__ == "__main__":
    main()
