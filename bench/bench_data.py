"""Data pipeline throughput: training tokens/s the LMDataModule delivers, against what a GPU consumes.

    python bench/bench_data.py                        # stdlib, byte, seq_len 65536, batch 1, 0 and 4 workers
    python bench/bench_data.py --fresh                # also time tokenization from scratch (temp data dir)
    python bench/bench_data.py --tokenizer bpe:8192   # BPE shards

Per worker count it times --batches consecutive batches from the training DataLoader after a warm-up of a
few batches per worker (worker start-up stays out of the figure) and prints tokens/s (seq_len * batch per
batch) beside --consumption, the rate the paper-shaped model trains at seq_len 65536 on one H100 (about
50k tokens/s); the ratio must stay well above 1 for the data pipeline never to be the bottleneck. It also
times the integrity check that prepare_data runs on a found cache (sha256 of every shard file), in s per GB.
The clock is time.perf_counter: this is CPU work, bench/timing.py's CUDA events do not apply.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
import warnings

import numpy as np
import torch

from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.shards import verify


def delivered_tokens_per_s(dm: LMDataModule, batches: int, warmup: int) -> tuple[float, float]:
    """(tokens/s, ms per batch) over ``batches`` consecutive training batches after ``warmup`` ones."""
    it = iter(dm.train_dataloader())
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        n += next(it)["tokens"][:, 1:].numel()  # targets: seq_len per row
    dt = time.perf_counter() - t0
    return n / dt, 1e3 * dt / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 4])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--fresh", action="store_true", help="tokenize into a temporary data dir (times a cold build)")
    ap.add_argument(
        "--consumption",
        type=float,
        default=50_000.0,
        help="tokens/s the model consumes (paper-shaped model, seq_len 65536, one H100: ~50k)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    # More workers than cores is the point of the 4-worker row on a small box; the warning is noise here.
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    tmp = tempfile.TemporaryDirectory() if args.fresh else None
    data_dir = tmp.name if tmp else args.data_dir
    common = dict(
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        corpus=args.corpus,
        tokenizer=args.tokenizer,
        data_dir=data_dir,
    )
    env = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": f"{os.cpu_count()} cores, {platform.machine()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print(" | ".join(f"{k} {v}" for k, v in env.items()))

    t0 = time.perf_counter()
    dm = LMDataModule(**common)
    dm.prepare_data()
    prep_s = time.perf_counter() - t0
    m = dm.manifest
    tokens = {s: m["splits"][s]["tokens"] for s in ("train", "val")}
    built = "built now" if prep_s > 0.9 * m["build"]["seconds"] else "cache reused"
    print(
        f"corpus {args.corpus}: {m['build']['source_bytes'] / 1e6:.1f} MB from {len(m['files'])} files, "
        f"{tokens['train'] / 1e6:.2f}M train + {tokens['val'] / 1e6:.2f}M val tokens ({args.tokenizer}); "
        f"tokenization {m['build']['seconds']:.2f} s with {m['build']['processes']} process(es) [{built}; "
        f"this run's prepare_data {prep_s:.2f} s]"
    )
    print(f"shards: {dm.shard_dir}")
    shard_bytes = sum(e["bytes"] for split in m["splits"].values() for e in split["checksums"].values())
    t0 = time.perf_counter()
    assert verify(dm.shard_dir, m) == []
    verify_s = time.perf_counter() - t0
    per_gb = verify_s / shard_bytes * 1e9
    print(f"integrity check: {shard_bytes / 1e6:.1f} MB hashed in {verify_s:.2f} s ({per_gb:.2f} s/GB)")

    rows = []
    print(
        f"\n{'workers':>7} {'tokens/s':>12} {'ms/batch':>9} {'x consumption':>14}   "
        f"(seq_len {args.seq_len}, batch {args.batch_size}, consumption {args.consumption:,.0f} tokens/s)"
    )
    for k in args.workers:
        dm = LMDataModule(**common, num_workers=k, progress=False)
        dm.setup("fit")
        tps, ms = delivered_tokens_per_s(dm, args.batches, warmup=2 * max(k, 1))
        rows.append({"workers": k, "tokens_per_s": tps, "ms_per_batch": ms, "ratio": tps / args.consumption})
        print(f"{k:>7} {tps:>12,.0f} {ms:>9.2f} {tps / args.consumption:>13.1f}x")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "env": env,
                    "args": vars(args),
                    "tokenization_s": m["build"]["seconds"],
                    "verify_s_per_gb": per_gb,
                    "tokens": tokens,
                    "results": rows,
                },
                f,
                indent=1,
            )
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
