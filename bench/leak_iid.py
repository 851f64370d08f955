"""Can a model trained with the paper's selection predict independent random tokens? A causal model cannot.

Every token of the training and test sequences is drawn uniformly and independently from V symbols, so no causal
model can score below ln V nats per token on fresh sequences: the past says nothing about the next token. A model
whose attention lets a position see anything of later tokens can. The paper's selection ranks a tile's entries
all at once (op README §8), so which entries a position sees depends on the norms of later queries and keys in
its tile, and those depend on the later tokens. Gradients do not flow through the ranking, but the layers above
can still learn to read its outcome. This trains the same small model twice, dense and Lighthouse, and reports
the held-out loss against ln V and the look-ahead probe (lighthouse.eval.lookahead) on the trained weights:

    PYTHONPATH=src python bench/leak_iid.py --steps 300            # CPU: ~10 min per backend on 2 cores
    PYTHONPATH=src python bench/leak_iid.py --backends lighthouse --device cuda --steps 1000
    PYTHONPATH=src python bench/leak_iid.py --backends lighthouse_naive --causal   # the strictly causal selection

``--causal`` sets ``model.arch.lighthouse.causal`` (op README §8b): that model must stay at ln V, and the probe's
look-ahead must be exactly 0 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from lighthouse.eval.lookahead import model_loss_fns, probe
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer


def build(backend: str, args: argparse.Namespace) -> Transformer:
    torch.manual_seed(args.seed)
    try:
        config = model_config(backend, args)
    except ValueError as err:  # the model's own check, before any step; named here by the options that set it
        raise SystemExit(f"{err}\n(set by --seq-len, --levels, --topk, --layers, --dim, --dense-layers)") from None
    return Transformer(config)


def model_config(backend: str, args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        vocab_size=args.vocab,
        dim=args.dim,
        n_layers=args.layers,
        n_heads=args.dim // 32,  # heads of 32 at every width, so width changes the model, not the attention's shape
        head_dim=32,
        ffn_hidden=3 * args.dim,
        rope_theta=10000.0,
        seq_len=args.seq_len,
        attention=backend,
        dense_layers=args.dense_layers,  # default none: every layer on the backend under test
        lighthouse={"levels": args.levels, "pooling_factor": 4, "topk": args.topk, "causal": args.causal},
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options ``build`` reads (both leak scripts take them)."""
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--topk", type=int, default=128)
    parser.add_argument("--layers", type=int, default=3, help="model.arch.n_layers")
    parser.add_argument(
        "--dim", type=int, default=64, choices=(32, 64, 128, 256), help="model width (heads of 32, FFN 3x the width)"
    )
    parser.add_argument(
        "--dense-layers", type=int, nargs="*", default=[], help="layers kept dense (model.arch.dense_layers)"
    )


def held_out_loss(model: Transformer, test: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(test[:, :-1])
        return F.cross_entropy(logits.float().flatten(0, 1), test[:, 1:].flatten()).item()


def train(backend: str, args: argparse.Namespace, device: torch.device) -> dict:
    model = build(backend, args).to(device)
    label = f"{backend}+causal" if args.causal and backend != "sdpa" else backend
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    draws = torch.Generator().manual_seed(args.seed + 1)
    test = torch.randint(
        0, args.vocab, (args.test_windows, args.seq_len + 1), generator=torch.Generator().manual_seed(99)
    )
    test = test.to(device)
    curve, start = [], time.time()
    for step in range(1, args.steps + 1):
        batch = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), generator=draws).to(device)
        loss = F.cross_entropy(model(batch[:, :-1]).float().flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            curve.append((step, held_out_loss(model, test)))
            print(
                f"{label} step {step}: held-out {curve[-1][1]:.4f} (ln V {math.log(args.vocab):.4f}), "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
    lighthouse, dense = model_loss_fns(model.eval(), backend, device)
    windows = torch.randint(
        0, args.vocab, (args.probe_windows, args.seq_len + 1), generator=torch.Generator().manual_seed(98)
    )
    result = probe(lighthouse, dense, windows, model.config.lighthouse_geometry().tile_len, bins=4, distances=16)
    print(result.table(), flush=True)
    return {
        "backend": label,
        "curve": curve,
        "probe_cut": result.cut_difference,
        "probe_cut_se": result.cut_standard_error,
        "probe_by_distance": result.cut_by_distance,
        "probe_distance_edges": result.cut_distance_edges,
        "probe_half": result.difference,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["sdpa", "lighthouse_naive"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="held-out evaluation interval")
    parser.add_argument("--vocab", type=int, default=16)
    add_model_options(parser)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--test-windows", type=int, default=8, help="fresh sequences of the held-out loss")
    parser.add_argument("--probe-windows", type=int, default=64, help="fresh sequences of the look-ahead probe")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--causal", action="store_true", help="the strictly causal selection (op README §8b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [train(b, args, torch.device(args.device)) for b in args.backends]
    for r in results:
        final = r["curve"][-1][1]
        print(
            f"{r['backend']}: held-out {final:.4f} nats, ln V - held-out {math.log(args.vocab) - final:+.4f}; "
            f"look-ahead at single positions {r['probe_cut']:+.4f} +- {r['probe_cut_se']:.4f}"
        )
    record = {"args": vars(args), "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    return record


if __name__ == "__main__":
    main()
