"""Context-parallel training throughput and memory per GPU, and a loss-curve check against one GPU (torchrun).

    # tokens/s and memory per GPU of the paper_1m model at 1M tokens on 2 GPUs (one sequence, cp=2)
    torchrun --standalone --nproc_per_node 2 bench/bench_context_parallel.py --cp 2 --seq-len 1048576
    # the loss curve of 20 steps on 2 GPUs, then the same steps on one GPU, compared
    torchrun --standalone --nproc_per_node 2 bench/bench_context_parallel.py --cp 2 --seq-len 1048576 \
        --curve-steps 20 --curve-out cp2.json
    torchrun --standalone --nproc_per_node 1 bench/bench_context_parallel.py --cp 1 --seq-len 1048576 \
        --curve-steps 20 --curve-out cp1.json --compare cp2.json

The training step is the one ContextParallelStrategy runs: each rank's loss is the mean over its slice of the
window, DDP averages the gradients over all ranks, fused AdamW under bf16 autocast, batch 1 window per data-
parallel replica. World / cp replicas read different windows. Times are CUDA-event medians after warm-up
(bench/timing.py); memory is the peak over the timed steps on every GPU (the largest is printed). Docs and the
full command list: docs/context_parallel.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
from timing import cuda_time_ms
from torch.nn.parallel import DistributedDataParallel

from lighthouse.model.config import model_flavor
from lighthouse.model.context_parallel import ContextParallelGroup, check_divisible, set_context_parallel
from lighthouse.model.transformer import Transformer


class WindowLoss(torch.nn.Module):
    """``forward(tokens)`` is the slice's mean loss, so DDP's hooks see the training computation."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_losses(tokens).mean()  # this rank's slice of the window, with cp > 1


def window(step: int, dp_rank: int, seq_len: int, vocab: int, device: str) -> torch.Tensor:
    """Window ``[1, seq_len + 1]`` of replica ``dp_rank`` at ``step``: the same on every rank of a CP group and on
    the one-GPU run (made on the CPU from a seed, so it does not depend on the device's generator)."""
    generator = torch.Generator().manual_seed(1000 * step + dp_rank)
    return torch.randint(0, vocab, (1, seq_len + 1), generator=generator).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cp", type=int, required=True, help="context-parallel degree (divides the GPU count)")
    parser.add_argument("--seq-len", type=int, default=1048576)
    parser.add_argument("--flavor", default="paper_1m")
    parser.add_argument("--backend", default="lighthouse", choices=["sdpa", "lighthouse", "lighthouse_naive"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--checkpointing", choices=["on", "off"], default="on", help="per-block recompute")
    parser.add_argument("--checkpoint-dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--mlp-chunk", type=int, default=65536, help="mlp_chunk_tokens (0: off)")
    parser.add_argument("--loss-chunk", type=int, default=65536, help="loss_chunk_tokens (0: off)")
    parser.add_argument("--curve-steps", type=int, default=0, help="train this many steps and record the losses")
    parser.add_argument("--curve-out", default=None, help="JSON file for the recorded losses")
    parser.add_argument("--compare", default=None, help="a --curve-out file of another run to compare with")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cpu", action="store_true", help="gloo on the CPU, fp32, curve mode only (a smoke test)")
    args = parser.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if args.cpu and not args.curve_steps:
        sys.exit("--cpu runs the curve check only (--curve-steps N): timings need CUDA events")
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("bench_context_parallel.py needs CUDA GPUs (or --cpu for a smoke test); launch it with torchrun")

    dist.init_process_group("gloo" if args.cpu else "nccl")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not args.cpu:
        torch.cuda.set_device(local)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % args.cp:
        sys.exit(f"--cp {args.cp} must divide the number of processes ({world})")
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device, (world // args.cp, args.cp), mesh_dim_names=("data_parallel", "context_parallel"))
    dp_rank, dp_size = mesh.get_local_rank("data_parallel"), world // args.cp

    config = model_flavor(
        args.flavor,
        attention=args.backend,
        seq_len=args.seq_len,
        activation_checkpointing=args.checkpointing == "on",
        checkpoint_dtype=args.checkpoint_dtype if args.checkpointing == "on" else "float32",
        mlp_chunk_tokens=args.mlp_chunk or None,
        loss_chunk_tokens=args.loss_chunk or None,
    )
    check_divisible(config.n_heads, config.n_kv_heads, args.seq_len, args.cp)
    torch.manual_seed(0)  # the same initial weights on every rank and in the one-GPU run
    model = Transformer(config).to(device)
    set_context_parallel(model, ContextParallelGroup.of(mesh.get_group("context_parallel")))
    if args.compile:
        model.compile_blocks()
    ids = None if args.cpu else [local]
    step_loss = DistributedDataParallel(WindowLoss(model), device_ids=ids) if world > 1 else WindowLoss(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=not args.cpu
    )

    def train_step(tokens: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=not args.cpu):
            loss = step_loss(tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    say = print if rank == 0 else (lambda *a, **k: None)
    name = "CPU" if args.cpu else torch.cuda.get_device_name()
    say(
        f"{name} x {world}, torch {torch.__version__}, flavor {args.flavor}, N {args.seq_len}, "
        f"cp {args.cp} x dp {dp_size}, backend {args.backend}, compile {args.compile}, "
        f"checkpointing {args.checkpointing} ({config.checkpoint_dtype}), chunks mlp {config.mlp_chunk_tokens} "
        f"loss {config.loss_chunk_tokens}",
        flush=True,
    )

    if args.curve_steps:
        losses = []
        for step in range(args.curve_steps):
            loss = train_step(window(step, dp_rank, args.seq_len, config.vocab_size, device))
            dist.all_reduce(loss)  # the mean of equal slices' means: the global batch's mean
            losses.append(loss.item() / world)
            say(f"step {step} loss {losses[-1]:.6f}", flush=True)
        if rank == 0 and args.curve_out:
            with open(args.curve_out, "w") as f:
                json.dump({"cp": args.cp, "world": world, "seq_len": args.seq_len, "losses": losses}, f)
        if rank == 0 and args.compare:
            with open(args.compare) as f:
                other = json.load(f)["losses"]
            n = min(len(other), len(losses))
            worst = max(abs(a - b) / abs(b) for a, b in zip(losses[:n], other[:n], strict=True))
            precision = "fp32" if args.cpu else "bf16 autocast"
            say(f"curve vs {args.compare}: {n} steps, max relative difference {worst:.2e} ({precision})")
    else:
        tokens = window(0, dp_rank, args.seq_len, config.vocab_size, device)
        for _ in range(args.warmup):
            train_step(tokens)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ms = cuda_time_ms(lambda: train_step(tokens), warmup=0, reps=args.steps)
        peaks = torch.tensor(
            [torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30], device="cuda"
        )
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        per_gpu = args.seq_len / args.cp / (ms / 1e3)  # positions this GPU computes per second
        say(
            "| N | GPUs | cp | dp | backend | step ms | tokens/s | tokens/s per GPU | peak alloc GiB/GPU | "
            "peak reserved GiB/GPU |\n|---|---|---|---|---|---|---|---|---|---|"
        )
        say(
            f"| {args.seq_len} | {world} | {args.cp} | {dp_size} | {args.backend} | {ms:.0f} | {per_gpu * world:,.0f} "
            f"| {per_gpu:,.0f} | {peaks[0].item():.1f} | {peaks[1].item():.1f} |",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
