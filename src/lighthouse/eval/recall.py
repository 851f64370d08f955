"""Multi-query key-value recall, scored: per distance bin, how well a model reads back values it saw earlier.

The windows (lighthouse/data/recall.py) are validation text with evaluation-key pairs inserted. Each window is
scored in one teacher-forced forward with dense attention; at the value digits of every query it reads:

- ``digit_acc``: the most likely of the ten digit tokens is the right one (chance 0.1);
- ``exact``: greedy decoding over the whole vocabulary gives every digit of the value;
- ``digit_logloss``: mean -log p(right digit) with the distribution renormalised over the ten digit tokens
  (chance ln 10 = 2.303), a smooth measure that moves before accuracy does.

Run on a checkpoint: ``python -m lighthouse.eval.recall --ckpt PATH [--windows 32] [--pairs 8]``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lighthouse.data.passkey_format import Encoder, TokenSource
from lighthouse.data.recall import RecallFormat, RecallSet, RecallWindow, check_room, eval_windows
from lighthouse.model.transformer import dense_eager
from lighthouse.tool_args import (
    about,
    checked_device,
    entry_point,
    int_in,
    local_path,
    output_file,
    summary,
    write_json,
)

DIGIT_CHANCE = 0.1
LOGLOSS_CHANCE = math.log(10)
LogitsFn = Callable[[Tensor], Tensor]  # inputs [B, N] -> logits [B, N, V]
_FIELDS = ("exact", "digit_hits", "digit_logloss", "queries")  # the columns of the counts
METRICS = ("digit_acc", "exact", "digit_logloss")  # per distance bin: what bin() gives and the logs hold
MAX_PAIRS = 64


@dataclass
class RecallConfig:
    """Recall evaluation, run with dense attention in every layer."""

    windows: int = 32
    """Evaluation windows (validation text with evaluation keys), each scored in one forward."""
    pairs: int = 8
    """Assignment/query pairs per window, spread evenly over the distance bins."""
    length: int | None = None
    """Tokens the model reads per window; None means the training seq_len."""
    seed: int = 0
    """Chooses keys, values and positions: the same windows at every validation and in every run."""

    def validate(self, max_len: int, prefix: str = "model.recall.") -> None:
        """Raise ValueError naming the field and its valid range."""
        if not isinstance(self.windows, int) or self.windows < 1:
            raise ValueError(f"{prefix}windows={self.windows!r} must be an integer >= 1")
        if not isinstance(self.pairs, int) or not 1 <= self.pairs <= MAX_PAIRS:
            raise ValueError(f"{prefix}pairs={self.pairs!r} must be an integer in [1, {MAX_PAIRS}]")
        if self.length is not None and (not isinstance(self.length, int) or not 1 <= self.length <= max_len):
            raise ValueError(f"{prefix}length={self.length!r} must be None or an integer in [1, {max_len}]")


def _rank_windows(n: int, rank: int, world_size: int) -> Iterator[tuple[int, bool]]:
    """(window index, counted) for this rank: window i goes to rank i % world_size; every rank runs the same
    number of forwards (a sharded model gathers weights inside each forward, on all ranks together), repeating
    window 0 uncounted where the windows do not divide evenly."""
    share = -(-n // world_size)
    mine = list(range(rank, n, world_size))
    yield from ((i, True) for i in mine)
    yield from ((0, False) for _ in range(share - len(mine)))


def score_window(logits: Tensor, window: RecallWindow, digit_ids: Tensor) -> Tensor:
    """Per query, (exact, digit hits, summed digit log-loss) ``[n, 3]``, from the logits ``[N, V]`` of a window's
    inputs (position t predicts token t + 1)."""
    k = window.values.shape[1]
    pos = torch.as_tensor(window.query_pos, device=logits.device)[:, None] + torch.arange(k, device=logits.device)
    targets = torch.as_tensor(window.tokens, device=logits.device)[pos]  # [n, k]
    at = logits[pos - 1].float()  # [n, k, V]: the logits that predict each value digit
    exact = (at.argmax(-1) == targets).all(-1)
    digit_logp = torch.log_softmax(at[..., digit_ids], -1)  # [n, k, 10]
    true = torch.as_tensor(window.values, device=logits.device)  # [n, k]: digits 0-9
    hits = (digit_logp.argmax(-1) == true).sum(-1)
    loss = -digit_logp.gather(-1, true[..., None])[..., 0].sum(-1)
    return torch.stack([exact.double(), hits.double(), loss.double()], 1)


@torch.no_grad()
def evaluate(
    logits_fn: LogitsFn,
    recall: RecallSet,
    digit_ids: np.ndarray,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """Counts ``[n_bins, 4]`` (exact hits, digit hits, summed digit log-loss, queries) over this rank's share of
    the windows; sum them over ranks for the totals."""
    counts = torch.zeros(len(recall.bins), len(_FIELDS), dtype=torch.float64, device=device)
    ids = torch.as_tensor(digit_ids, device=device)
    for i, counted in _rank_windows(len(recall.windows), rank, world_size):
        window = recall.windows[i]
        tokens = torch.as_tensor(window.tokens, device=device)[None]  # [1, W]
        logits = logits_fn(tokens[:, :-1])[0]  # [W - 1, V]
        per_query = score_window(logits, window, ids)  # [n, 3]
        rows = torch.cat([per_query, torch.ones_like(per_query[:, :1])], 1) * float(counted)
        counts.index_add_(0, torch.as_tensor(window.bins, device=device), rows)
    return counts


@dataclass
class RecallScores:
    """Summed counts per distance bin, and the metrics made of them."""

    labels: list[str]  # the bins, e.g. '64-1k'
    counts: np.ndarray  # [n_bins, 4]: exact hits, digit hits, summed digit log-loss, queries
    value_digits: int

    def bin(self, i: int) -> dict[str, float | None]:
        """The bin's metrics; None where no query fell in it (0 would read as a perfect log-loss)."""
        exact, hits, loss, n = self.counts[i]
        if n == 0:
            return dict.fromkeys(METRICS)
        digits = n * self.value_digits
        return {"digit_acc": hits / digits, "exact": exact / n, "digit_logloss": loss / digits}

    def metrics(self, prefix: str = "recall/") -> dict[str, float]:
        """``recall/<bin>/digit_acc``, ``.../exact``, ``.../digit_logloss`` for every bin with queries."""
        return {
            f"{prefix}{label}/{name}": float(value)
            for i, label in enumerate(self.labels)
            if self.counts[i, 3] > 0
            for name, value in self.bin(i).items()
        }

    def as_dict(self) -> dict:
        return {
            "digit_chance": DIGIT_CHANCE,
            "logloss_chance": LOGLOSS_CHANCE,
            "value_digits": self.value_digits,
            "bins": {label: {**self.bin(i), "queries": int(self.counts[i, 3])} for i, label in enumerate(self.labels)},
        }

    def table(self) -> str:
        lines = ["| distance | queries | digit acc | exact | digit log-loss |", "|---|---|---|---|---|"]
        for i, label in enumerate(self.labels):
            m = {k: "-" if v is None else f"{v:.3f}" for k, v in self.bin(i).items()}
            lines.append(
                f"| {label} | {int(self.counts[i, 3])} | {m['digit_acc']} | {m['exact']} | {m['digit_logloss']} |"
            )
        return "\n".join(lines)


def evaluate_recall(
    model: LogitsFn,
    tokenizer: Encoder,
    windows: RecallSet,
    device: torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
) -> RecallScores:
    """Score ``windows`` on ``model`` (inputs [B, N] -> logits [B, N, V]; run it with dense attention, e.g. in
    lighthouse.model.transformer.dense_eager), this rank's share, the counts summed by ``reduce_sum`` when given."""
    device = device or torch.device("cpu")
    digit_ids = RecallFormat.from_tokenizer(tokenizer).digit_ids
    counts = evaluate(model, windows, digit_ids, device, rank, world_size)
    if reduce_sum is not None:
        counts = reduce_sum(counts)
    return RecallScores([b.label for b in windows.bins], counts.cpu().numpy(), windows.value_digits)


class RecallEval:
    """The fixed window set of one configuration (built once), and its evaluation on a model."""

    def __init__(self, config: RecallConfig, tokenizer: Encoder, filler: TokenSource, max_len: int):
        self.config, self.tokenizer = config, tokenizer
        length = config.length or max_len
        self.windows = eval_windows(tokenizer, filler, length, config.windows, config.pairs, config.seed)

    def score(self, logits_fn: LogitsFn, device: torch.device, rank=0, world_size=1, reduce_sum=None) -> RecallScores:
        return evaluate_recall(logits_fn, self.tokenizer, self.windows, device, rank, world_size, reduce_sum)


# ---- command line: any checkpoint -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> RecallScores:
    parser = argparse.ArgumentParser(prog="python -m lighthouse.eval.recall", description=summary(__doc__))
    parser.add_argument(
        "--ckpt",
        required=True,
        help="a .ckpt written by training, or a run folder (logs/demo/<start time>) or run name (logs/demo), "
        "optionally followed by /last: its newest checkpoint that verifies",
    )
    parser.add_argument("--windows", type=int, default=RecallConfig.windows)
    parser.add_argument(
        "--pairs", type=int, default=RecallConfig.pairs, help="their lines fill at most half a window (5 in 512 bytes)"
    )
    parser.add_argument("--length", type=int, help="tokens per window (default: the training seq_len)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="where the run's data module keeps its shards (default: as trained)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the scores to this file")
    args = parser.parse_args(argv)
    from lighthouse.checkpoint.read import dense_model, read_checkpoint
    from lighthouse.checkpoint.records import saved_model_config
    from lighthouse.eval.passkey import split_reader
    from lighthouse.eval.val_windows import run_datamodule
    from lighthouse.train.run_dir import find_checkpoint  # the run layout; only the command needs it

    # Every check that needs no checkpoint before it is read: a typo costs no time.
    if args.json is not None:  # a blank value too: it is refused, not taken for "no file"
        output_file("--json", args.json, reads=[args.ckpt])
    local_path("--ckpt", args.ckpt)
    int_in("--windows", args.windows, 1)
    int_in("--pairs", args.pairs, 1, MAX_PAIRS)
    if args.length is not None:
        int_in("--length", args.length, 1, why=" (omit it for the training seq_len)")
    device = checked_device("--device", args.device)
    ckpt_path = find_checkpoint(args.ckpt)
    with about("--ckpt", args.ckpt):
        ckpt = read_checkpoint(ckpt_path, mmap=True)
        max_len = saved_model_config(ckpt).seq_len
    if args.length is not None:
        int_in("--length", args.length, 1, max_len, " (the model's context)")
    with about("--ckpt", args.ckpt):
        datamodule = run_datamodule(ckpt, args.data_dir)  # the run's own data module: its validation text
        pair_len = RecallFormat.from_tokenizer(datamodule.tokenizer).pair_length
    # Before the model exists: how many pairs fit depends on the window and the tokenizer's lines (data/recall.py).
    length = args.length or max_len
    if why := check_room(length, 1, pair_len):
        if args.length is not None:
            raise ValueError(f"--length={length} is invalid: too short for a recall pair ({why})")
        raise ValueError(f"--ckpt={args.ckpt!r} is invalid: its context is too short for a recall pair ({why})")
    if check_room(length, args.pairs, pair_len):
        most = (length + 1) // (2 * pair_len)
        why = f" (pairs of {pair_len} tokens may fill at most half of a window of {length + 1} tokens)"
        int_in("--pairs", args.pairs, 1, most, why)
    config = RecallConfig(args.windows, args.pairs, args.length, args.seed)
    with about("--ckpt", args.ckpt):
        model = dense_model(ckpt).to(device)
    evaluator = RecallEval(config, datamodule.tokenizer, split_reader(datamodule, "val"), model.config.seq_len)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    with dense_eager(model), autocast:
        scores = evaluator.score(model, device)
    print(
        f"recall, {ckpt_path} (step {ckpt.get('global_step')}), dense attention, {args.windows} windows x "
        f"{args.pairs} pairs; chance: digit acc {DIGIT_CHANCE}, digit log-loss {LOGLOSS_CHANCE:.3f}"
    )
    print(scores.table())
    if args.json is not None:
        # What was scored, beside how: two records of one checkpoint with other settings are told apart.
        settings = {"windows": args.windows, "pairs": args.pairs, "length": length, "seed": args.seed}
        record = {"ckpt": str(ckpt_path), "global_step": ckpt.get("global_step"), **settings, **scores.as_dict()}
        write_json("--json", args.json, record)
    return scores


if __name__ == "__main__":
    entry_point(main)
