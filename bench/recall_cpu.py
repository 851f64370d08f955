"""Is multi-query recall learnable, and at what density? A flat CPU training loop on recall windows.

    PYTHONPATH=src python bench/recall_cpu.py --seq-len 1024 --pairs 16 --fraction 1.0 --steps 300

The same pieces as training (the data module's training stream with its recall mix, the model's token losses)
and as validation (lighthouse.eval.recall on held-out windows with evaluation keys), without Lightning, so a
tiny dense model trains for a few hundred steps in minutes on two cores. Besides the held-out scores it prints
the training loss on the answer digits (the value digits of the queries, the only tokens recall can lower):
ln 10 = 2.303 there until the model reads values back. Results: bench/recall_findings.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from lighthouse.data import recall as recall_data
from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.packing import window_span
from lighthouse.eval.passkey import split_reader
from lighthouse.eval.recall import RecallConfig, RecallEval
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer


def training_batch(dataset, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of the stream (tokens [B, L + 1]) and a mask [B, L] of the targets that are answer
    digits (the query values of its recall windows)."""
    tokens, answers = [], []
    for b in range(dataset.batch_size):
        position = global_batch * dataset.batch_size + b
        raw = dataset.split.read(*window_span(dataset.window_at(position), dataset.seq_len))
        doc = dataset.mix.document(position, raw)
        mask = np.zeros(dataset.seq_len, dtype=bool)
        if doc is not None:
            digits = doc.query_pos[:, None] + np.arange(doc.values.shape[1])  # [n, k]: positions of answer digits
            mask[digits.ravel() - 1] = True  # target t is token t + 1
        tokens.append(raw if doc is None else doc.tokens)
        answers.append(mask)
    return torch.from_numpy(np.stack(tokens)), torch.from_numpy(np.stack(answers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=8, help="pairs per training recall window")
    parser.add_argument("--fraction", type=float, default=0.5, help="share of training windows with pairs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--eval-pairs", type=int, help="pairs per held-out window (default: --pairs)")
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument("--max-bytes", type=int, default=20_000_000)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the curve to this file")
    parser.add_argument(
        "--query-like-assignment",
        action="store_true",
        help="an experiment: the query line repeats the assignment's text (`KV_3f9a = \"`), so the value follows the "
        "same context in both lines and plain induction (copy what followed this context before) answers it",
    )
    args = parser.parse_args()
    if args.query_like_assignment:
        recall_data.QUERY = recall_data.ASSIGN  # read when the format is built (RecallFormat.from_tokenizer)
    torch.manual_seed(args.seed)

    dm = LMDataModule(
        corpus=args.corpus,
        tokenizer="byte",
        seq_len=args.seq_len,
        batch_size=args.batch,
        data_dir=args.data_dir,
        seed=args.seed,
        recall_fraction=args.fraction,
        recall_pairs=args.pairs,
        max_bytes=args.max_bytes,
        progress=False,
        tokenize_workers=1,
    )
    dm.setup("fit")
    dataset = dm.train_dataset(0, 1)
    config = ModelConfig(
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.heads,
        ffn_hidden=args.dim * 3,
        seq_len=args.seq_len,
        dense_layers=[],
        vocab_size=dm.vocab_size,
    )
    model = Transformer(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)

    def lr_at(step: int) -> float:  # linear warm-up, cosine to 10%: the training recipe's shape
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(args.steps - args.warmup, 1)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    recall = RecallConfig(windows=args.eval_windows, pairs=args.eval_pairs or args.pairs)
    evaluator = RecallEval(recall, dm.tokenizer, split_reader(dm, "val"), args.seq_len)
    print(f"{vars(args)}; {model.num_params() / 1e6:.2f}M parameters (without embeddings)", flush=True)
    curve, answer_losses, start = [], [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                scores = evaluator.score(model, torch.device("cpu"))
            model.train()
            bins = {label: scores.bin(i) for i, label in enumerate(scores.labels)}
            train_answer = float(np.mean(answer_losses)) if answer_losses else float("nan")
            answer_losses = []
            curve.append({"step": step, "train_answer_loss": train_answer, "bins": bins})
            cells = " | ".join(f"{k} acc {v['digit_acc']:.3f} ll {v['digit_logloss']:.3f}" for k, v in bins.items())
            print(f"step {step:4d} {time.perf_counter() - start:6.0f}s train answer loss {train_answer:.3f} | {cells}")
            if step == args.steps:
                break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        tokens, answers = training_batch(dataset, step)
        losses = model.token_losses(tokens)  # [B, L]
        loss = losses.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if answers.any():
            answer_losses.append(losses.detach()[answers].mean().item())
        if step % 25 == 0:
            print(f"  step {step:4d} loss {loss.item():.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "curve": curve}, f, indent=1)


if __name__ == "__main__":
    main()
