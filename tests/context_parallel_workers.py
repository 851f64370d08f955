"""Process bodies for tests/test_context_parallel.py: gloo process groups on the CPU, one function per spawned job.

Spawning costs seconds per process on a 2-core machine, so each job checks several things; a failed assertion in
any rank fails the test with that rank's traceback (torch.multiprocessing.spawn re-raises it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lighthouse.model.config import ModelConfig
from lighthouse.model.context_parallel import ContextParallelGroup, head_to_seq, seq_to_head, set_context_parallel
from lighthouse.model.transformer import Transformer


def launch(fn, world: int, folder: Path, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes joined by one gloo process group."""
    init = folder / "init"
    init.unlink(missing_ok=True)
    mp.spawn(_entry, args=(fn, world, str(init), args), nprocs=world, join=True)


def _entry(rank: int, fn, world: int, init: str, args: tuple) -> None:
    torch.set_num_threads(1)  # 2 to 4 processes on 2 cores: oversubscribed threads only slow every rank down
    os.environ.setdefault("TRITON_INTERPRET", "1")
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- the all-to-all pair


def exchange(rank: int, world: int) -> None:
    """seq_to_head / head_to_seq against slicing one full tensor, forward and backward, bit for bit."""
    cp = ContextParallelGroup.of(dist.group.WORLD)
    B, N, H, D = 2, 8 * world, 2 * world, 3  # noqa: N806
    n, h = N // world, H // world
    full = torch.randn(B, N, H, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weight = torch.randn(B, N, h * world, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mine = full[:, rank * n : (rank + 1) * n].clone().requires_grad_(True)  # [B, n, H, D]

    heads = seq_to_head(mine, cp)  # [B, N, h, D]
    assert heads.shape == (B, N, h, D), heads.shape
    assert torch.equal(heads, full[:, :, rank * h : (rank + 1) * h])
    assert torch.equal(head_to_seq(heads, cp), mine)

    # d/dx of sum(seq_to_head(x) * w) is w's entries, routed back to the rank and slot each came from.
    (heads * weight[:, :, rank * h : (rank + 1) * h]).sum().backward()
    assert torch.equal(mine.grad, weight[:, rank * n : (rank + 1) * n])

    back = heads.detach().clone().requires_grad_(True)
    (head_to_seq(back, cp) * weight[:, rank * n : (rank + 1) * n]).sum().backward()
    assert torch.equal(back.grad, weight[:, :, rank * h : (rank + 1) * h])


# ---------------------------------------------------------------- training a tiny model


def tiny_config(attention: str, seq_len: int, **memory) -> ModelConfig:
    # GQA (4 query heads, 2 KV heads) so both head counts go through the exchange; L=2, p=2 fits 256 positions.
    # ``memory``: activation checkpointing and the chunk sizes (the long-context configs turn them on).
    return ModelConfig(
        **memory,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=128,
        vocab_size=257,
        seq_len=seq_len,
        attention=attention,
        dense_layers=[],
        lighthouse={"levels": 2, "pooling_factor": 2, "topk": 128},
    )


def global_batch(step: int, windows: int, seq_len: int) -> torch.Tensor:
    """The same windows ``[windows, seq_len + 1]`` in every process: random bytes below 16, so that a few steps
    already lower the loss (the curves compared are curves, not noise around ln 257)."""
    return torch.randint(0, 16, (windows, seq_len + 1), generator=torch.Generator().manual_seed(100 + step))


def train(
    attention: str,
    seq_len: int,
    windows: int,
    steps: int,
    cp: ContextParallelGroup | None = None,
    dp_rank: int = 0,
    dp_size: int = 1,
    memory: dict | None = None,
) -> dict:
    """``steps`` AdamW steps on the global batches 0, 1, ...; with ``cp``, this rank's slice of its data-parallel
    share, gradients averaged over the world afterwards as DDP averages them. Returns the global losses and the
    gradients of the first step."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(attention, seq_len, **(memory or {})))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    set_context_parallel(model, cp)
    distributed = dist.is_available() and dist.is_initialized()
    losses, first_grads = [], None
    per_replica = windows // dp_size
    for step in range(steps):
        tokens = global_batch(step, windows, seq_len)[dp_rank * per_replica : (dp_rank + 1) * per_replica]
        loss = model.token_losses(tokens).mean()  # the model shards the window to this rank's slice
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed:
            for p in model.parameters():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= dist.get_world_size()
        if first_grads is None:
            first_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        losses.append(loss.item())
        optimizer.step()
    return {"losses": losses, "grads": first_grads}


def train_parallel(rank: int, world: int, cp_size: int, jobs: list[dict], out: str) -> None:
    """Each job's :func:`train` on a (world / cp_size) x cp_size mesh; rank 0 saves the results to ``out``. With
    one CP group over the world, the all-to-all pair is checked first (:func:`exchange`): one spawn for both."""
    from torch.distributed.device_mesh import init_device_mesh

    if cp_size == world:
        exchange(rank, world)
    mesh = init_device_mesh("cpu", (world // cp_size, cp_size), mesh_dim_names=("data_parallel", "context_parallel"))
    cp = ContextParallelGroup.of(mesh.get_group("context_parallel"))
    dp_rank, dp_size = mesh.get_local_rank("data_parallel"), mesh.size(0)
    results = [train(**job, cp=cp, dp_rank=dp_rank, dp_size=dp_size) for job in jobs]
    if rank == 0:
        torch.save(results, out)
