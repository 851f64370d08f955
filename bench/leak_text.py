"""The look-ahead on real text: the same small model trained dense, with the paper's selection and with the causal
one (op README §8, §8b), each validated with its own attention and read densely, and probed.

bench/leak_iid.py shows the paper's selection lets a model see the next token on random data. Here, on the stdlib
corpus in bytes, the question is what that does to training: a Lighthouse run whose own validation loss falls below
dense training's while its dense reading does not follow is training on the look-ahead. The causal selection
cannot see ahead, so its own loss is an honest one.

    PYTHONPATH=src python bench/leak_text.py --steps 300     # CPU, ~10 min for the three on 2 cores
    PYTHONPATH=src python bench/leak_text.py --arms dense causal --tokenizer bpe:4096 --no-probe
    PYTHONPATH=src python bench/leak_text.py --arms causal --layers 5 --dense-layers 0 4 --no-probe

``--tokenizer`` asks whether the gap between sparse and dense training depends on what a token is: with bytes a
pooled entry of 4 or 16 tokens is the mean of a few characters, with BPE of a few words. Losses are per token of
that tokenizer; ``bytes_per_token`` (of the validation windows) converts them to nats per byte. ``--layers`` and
``--dense-layers`` ask which layers a sparse model needs dense (bench/RESULTS.md, "Which lever moves the per-step
deficit?").
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch
from leak_iid import add_model_options, build

from lighthouse.data.datamodule import LMDataModule
from lighthouse.eval.lookahead import model_loss_fns, probe
from lighthouse.eval.val_windows import read_windows, window_ids
from lighthouse.model.transformer import dense_eager

ARMS = {"dense": ("sdpa", False), "paper": ("lighthouse_naive", False), "causal": ("lighthouse_naive", True)}


def val_losses(model, windows: torch.Tensor) -> tuple[float, float]:
    """(validation loss with the model's own attention, with every layer dense)."""
    with torch.no_grad():
        own = model.token_losses(windows).mean().item()
        with dense_eager(model):
            dense = model.token_losses(windows).mean().item()
    return own, dense


def train(arm: str, args: argparse.Namespace, datamodule: LMDataModule, val: torch.Tensor) -> dict:
    backend, causal = ARMS[arm]
    model = build(backend, SimpleNamespace(**{**vars(args), "causal": causal, "vocab": datamodule.vocab_size}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    torch.manual_seed(args.seed)  # the same batches in every arm
    batches = iter(datamodule.train_dataloader())
    curve, start = [], time.time()
    for step in range(1, args.steps + 1):
        loss = model.token_losses(next(batches)["tokens"]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            own, dense = val_losses(model.eval(), val)
            model.train()
            curve.append((step, own, dense))
            print(
                f"{arm} step {step}: val {own:.4f} own attention, {dense:.4f} dense, {time.time() - start:.0f} s",
                flush=True,
            )
    result = {"arm": arm, "curve": curve}
    if backend != "sdpa" and args.probe:
        lighthouse, dense = model_loss_fns(model.eval(), backend, torch.device("cpu"))
        found = probe(lighthouse, dense, val, model.config.lighthouse_geometry().tile_len, bins=4, distances=16)
        result |= {
            "probe_cut": found.cut_difference,
            "probe_cut_se": found.cut_standard_error,
            "probe_by_distance": found.cut_by_distance,
        }
        print(found.table(), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    add_model_options(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-windows", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default="byte", help="data.tokenizer: 'byte' or 'bpe:N' (trained on the corpus)")
    parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True, help="the look-ahead probe")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    datamodule = LMDataModule(
        corpus="stdlib",
        tokenizer=args.tokenizer,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
        num_workers=0,
    )
    datamodule.setup("fit")
    val = read_windows(datamodule, window_ids(datamodule, args.val_windows), "val")
    bytes_per_token = sum(len(datamodule.tokenizer.decode(w.tolist()).encode()) for w in val) / val.numel()
    print(f"tokenizer {args.tokenizer}: {bytes_per_token:.2f} bytes per token in the validation windows", flush=True)
    results = [train(arm, args, datamodule, val) for arm in args.arms]
    for r in results:
        _, own, dense = r["curve"][-1]
        probe_text = f"; look-ahead {r['probe_cut']:+.4f} +- {r['probe_cut_se']:.4f}" if "probe_cut" in r else ""
        print(f"{r['arm']}: val {own:.4f} own attention, {dense:.4f} dense{probe_text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "bytes_per_token": bytes_per_token, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
