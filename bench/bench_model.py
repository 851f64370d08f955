"""Whole-model training throughput on one GPU: tokens/s of a full training step, Lighthouse vs dense.

    PYTHONPATH=src python bench/bench_model.py           # paper-shaped model at 65536 and 131072
    PYTHONPATH=src python bench/bench_model.py --flavor small --seq-lens 16384 --backends sdpa lighthouse_naive

One step = forward, backward and a fused AdamW update under bf16 autocast, batch 1. Each (N, backend) is
timed with CUDA events after warm-up, median of --steps, with per-block activation checkpointing unless
--checkpointing off.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import sys

import torch
from timing import cuda_time_ms

from lighthouse.model.config import model_flavor
from lighthouse.model.transformer import Transformer


def time_training_steps(model: Transformer, seq_len: int, steps: int, warmup: int) -> tuple[float, float, float, float]:
    """Median step time in ms; peak allocated and reserved memory over the timed steps, and the part of the
    peak above the parameters and optimizer state (activations and their gradients), all in GiB."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (1, seq_len + 1), device="cuda", generator=generator)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.token_losses(tokens).mean()  # the training loss, chunked or not as configured
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Warm up before resetting the peaks: compilation and Triton autotuning allocate scratch once.
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    resident = torch.cuda.memory_allocated()  # parameters, AdamW state, the tokens
    ms = cuda_time_ms(step, warmup=0, reps=steps)
    peak = torch.cuda.max_memory_allocated()
    return ms, peak / 2**30, torch.cuda.max_memory_reserved() / 2**30, (peak - resident) / 2**30


def run_one(
    flavor: str,
    backend: str,
    seq_len: int,
    steps: int,
    warmup: int,
    checkpointing: bool,
    compile: bool,
    overrides: dict,
):
    config = model_flavor(
        flavor, attention=backend, seq_len=seq_len, activation_checkpointing=checkpointing, **overrides
    )
    model = Transformer(config).cuda()
    if compile:
        model.compile_blocks()
    try:
        return time_training_steps(model, seq_len, steps, warmup)
    finally:
        # Compiled code holds references to the module it was traced from (its guards and constants); without
        # a reset the previous model's weights stay allocated and inflate the next row's peak.
        del model
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="paper")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[65536, 131072])
    parser.add_argument("--backends", nargs="+", default=["sdpa", "lighthouse"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    # At 65536 the paper-shaped model needs per-block activation checkpointing on an 80 GB GPU (measured:
    # without it the dense model runs out of memory in the backward).
    parser.add_argument("--checkpointing", choices=["on", "off"], default="on")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block (LitLM compile=true)")
    # Memory options (ModelConfig fields of the same names).
    parser.add_argument("--checkpoint-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--offload", action="store_true", help="checkpoint_offload: block inputs in host memory")
    parser.add_argument("--mlp-chunk", type=int, default=None, help="mlp_chunk_tokens")
    parser.add_argument("--loss-chunk", type=int, default=None, help="loss_chunk_tokens")
    # configs/lh_16k.yaml sets K=512: the flavor's K=2048 would shrink to fit the tiles at 16384.
    parser.add_argument("--topk", type=int, default=None, help="Lighthouse top-k K (default: the flavor's)")
    # Grouped-query attention and the Lighthouse options (issue 28): e.g. --n-heads 16 --n-kv-heads 4 --selection
    # per_kv_group against the same with --selection paper (K/V repeated to the query heads).
    parser.add_argument("--n-heads", type=int, default=None, help="query heads (default: the flavor's)")
    parser.add_argument("--n-kv-heads", type=int, default=None, help="KV heads (default: n_heads)")
    parser.add_argument("--selection", choices=["paper", "per_kv_group"], default=None)
    parser.add_argument("--scorer", choices=["norm", "dilated"], default=None)
    parser.add_argument("--dilation", type=int, default=None)
    args = parser.parse_args()
    overrides = dict(  # ModelConfig fields beyond the flavor
        checkpoint_dtype=args.checkpoint_dtype,
        checkpoint_offload=args.offload,
        mlp_chunk_tokens=args.mlp_chunk,
        loss_chunk_tokens=args.loss_chunk,
    )
    if args.n_heads is not None:
        overrides["n_heads"] = args.n_heads
    if args.n_kv_heads is not None:
        overrides["n_kv_heads"] = args.n_kv_heads
    lighthouse = {
        name: value
        for name, value in dict(
            topk=args.topk, selection=args.selection, scorer=args.scorer, dilation=args.dilation
        ).items()
        if value is not None
    }
    if lighthouse:
        overrides["lighthouse"] = dataclasses.replace(model_flavor(args.flavor).lighthouse, **lighthouse)
    if not torch.cuda.is_available():
        sys.exit("bench_model.py needs a CUDA GPU")

    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, flavor {args.flavor}, "
        f"activation checkpointing {args.checkpointing}, compile {args.compile}, config overrides {overrides}"
    )
    rows = []
    for seq_len in args.seq_lens:
        baseline = None
        for backend in args.backends:
            checkpointing = args.checkpointing == "on"
            try:
                ms, allocated, reserved, activations = run_one(
                    args.flavor, backend, seq_len, args.steps, args.warmup, checkpointing, args.compile, overrides
                )
            except torch.OutOfMemoryError:
                rows.append((seq_len, backend, "OOM", "", "", "", "", "", "", args.checkpointing))
                continue
            tps = seq_len / (ms / 1e3)
            if backend == "sdpa":
                baseline = tps
            ratio = f"{tps / baseline:.2f}x" if baseline else ""
            rows.append(
                (
                    seq_len,
                    backend,
                    f"{ms:.1f}",
                    f"{tps:,.0f}",
                    ratio,
                    f"{allocated:.2f}",
                    f"{activations:.2f}",
                    f"{activations * 2**30 / seq_len / 1024:.1f}",
                    f"{reserved:.2f}",
                    args.checkpointing,
                )
            )
            print(rows[-1], flush=True)

    header = (
        "N",
        "backend",
        "step ms",
        "tokens/s",
        "vs sdpa",
        "peak alloc GiB",
        "above weights+optimizer GiB",
        "KiB/token above weights",
        "peak reserved GiB",
        "act. ckpt",
    )
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    # Host memory matters for checkpoint_offload (pinned copies of the block inputs); ru_maxrss is in KiB on Linux.
    print(f"host peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
