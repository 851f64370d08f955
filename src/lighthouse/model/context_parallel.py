"""Context parallelism (Ulysses): one sequence over the ``cp`` ranks of a group, heads exchanged around attention.

Every rank of a context-parallel (CP) group holds the same parameters and a contiguous slice of the sequence:
rank r of cp owns positions ``[r*n, (r+1)*n)`` with ``n = N / cp``. Embeddings, norms, the MLP, the output layer
and the loss work per position, so they run on the slice unchanged. Attention needs the whole sequence; an
all-to-all turns the sequence-sharded ``[B, n, H, D]`` into the head-sharded ``[B, N, H/cp, D]``, the unchanged
backend runs on it, and the reverse all-to-all brings the output back. Lighthouse selects per (batch, head)
(ops/lighthouse/README.md: pyramid, scores and top-k never mix heads), so a rank holding whole heads over the
whole sequence computes exactly what one process computes for those heads.

Gradients: each rank's loss is the mean over its own slice. Slices are equal in size, so the mean of those means
over all dp*cp ranks is the mean over every token of the global batch, and averaging gradients over the whole
world (what DDP and :class:`lighthouse.train.distributed.ContextParallelStrategy` do) gives the one-process gradient.
The all-to-all's backward carries each rank's share of the other ranks' losses back to its activations.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# How the CLI spells the CP degree; error messages name it.
CP_FIELD = "trainer.strategy.init_args.context_parallel_size"


@dataclass(frozen=True)
class ContextParallelGroup:
    """The ranks that share one sequence: the process group, this rank's index in it, and its size."""

    group: object  # torch.distributed.ProcessGroup
    rank: int
    size: int

    @classmethod
    def of(cls, group) -> ContextParallelGroup:
        return cls(group, dist.get_rank(group), dist.get_world_size(group))

    def shard(self, tokens: Tensor) -> Tensor:
        """This rank's slice of a window ``tokens`` ``[B, N + 1]``: ``[B, N/cp + 1]``, positions ``[r*n, (r+1)*n]``.

        One token more than the slice: the last input position's target lies on the next rank's slice."""
        return shard_window(tokens, self.rank, self.size)

    def positions(self, n_local: int) -> slice:
        """The global positions of this rank's ``n_local`` inputs (RoPE needs them)."""
        return slice(self.rank * n_local, (self.rank + 1) * n_local)

    def gather_sequence(self, x: Tensor) -> Tensor:
        """``[B, n, ...]`` slices of all ranks -> ``[B, N, ...]`` on every rank; no gradient (evaluation only)."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)


def shard_window(tokens: Tensor, rank: int, size: int) -> Tensor:
    """Slice ``rank`` of ``size`` of a window ``[B, N + 1]`` (N inputs and their targets): ``[B, N/size + 1]``."""
    n_inputs = tokens.shape[1] - 1
    if n_inputs % size:
        raise ValueError(f"a window of {n_inputs} positions does not split into {size} equal context-parallel slices")
    n = n_inputs // size
    return tokens[:, rank * n : (rank + 1) * n + 1]


def check_degree(cp: object) -> None:
    """Refuse a CP degree that is not a whole number of ranks."""
    if not isinstance(cp, int) or isinstance(cp, bool) or cp < 1:
        raise ValueError(f"{CP_FIELD}={cp!r} is invalid: it must be an integer >= 1")


def check_divisible(n_heads: int, n_kv_heads: int, seq_len: int, cp: int) -> None:
    """Refuse a CP degree the model cannot use: heads (and KV heads) and the sequence must split evenly."""
    check_degree(cp)
    for field, value in (("model.arch.n_heads", n_heads), ("model.arch.n_kv_heads", n_kv_heads)):
        if value % cp:
            valid = [d for d in range(1, value + 1) if value % d == 0]
            raise ValueError(
                f"{CP_FIELD}={cp} must divide {field}={value} (every rank attends with whole heads): "
                f"valid values are {valid}"
            )
    if seq_len % cp:
        raise ValueError(f"{CP_FIELD}={cp} must divide data.seq_len={seq_len} (each rank holds seq_len/cp positions)")


# ---------------------------------------------------------------- the all-to-all pair


def _all_to_all(x: Tensor, group, scatter_dim: int, gather_dim: int) -> Tensor:
    """Split ``x`` into ``size`` chunks along ``scatter_dim``, send chunk j to rank j, and concatenate what arrives
    along ``gather_dim`` in rank order."""
    size = dist.get_world_size(group)
    # all_to_all_single exchanges contiguous equal chunks of dim 0: move the scattered dim to the front.
    send = x.movedim(scatter_dim, 0).contiguous()
    send = send.view(size, send.shape[0] // size, *send.shape[1:])
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[j] is rank j's chunk: [size, chunk, ...] with the scattered dim (now a chunk of it) second.
    recv = recv.movedim(1, scatter_dim + 1)  # [size, ...x's dims with scatter_dim chunked...]
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    """The differentiable exchange: the gradient of an all-to-all is the all-to-all with the two dims swapped."""

    @staticmethod
    def forward(ctx, x: Tensor, group, scatter_dim: int, gather_dim: int) -> Tensor:
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.group, scatter_dim=gather_dim, gather_dim=scatter_dim), None, None, None


def seq_to_head(x: Tensor, cp: ContextParallelGroup) -> Tensor:
    """``[B, N/cp, H, D]`` (this rank's positions, all heads) -> ``[B, N, H/cp, D]`` (all positions, this rank's
    heads: ``[r*H/cp, (r+1)*H/cp)``). Differentiable; its backward is :func:`head_to_seq`."""
    return _AllToAll.apply(x, cp.group, 2, 1)


def head_to_seq(x: Tensor, cp: ContextParallelGroup) -> Tensor:
    """The inverse of :func:`seq_to_head`: ``[B, N, H/cp, D]`` -> ``[B, N/cp, H, D]``."""
    return _AllToAll.apply(x, cp.group, 1, 2)


# ---------------------------------------------------------------- installing a group on a model


def context_parallel_size(trainer) -> int:
    """The trainer's cp: its strategy's ``context_parallel_size`` (lighthouse.train.distributed), else 1."""
    return getattr(getattr(trainer, "strategy", None), "context_parallel_size", 1)


def set_context_parallel(model: torch.nn.Module, cp: ContextParallelGroup | None) -> None:
    """Make ``model`` (a Transformer) expect sequence slices and exchange heads around every attention layer;
    None (or a group of one) restores the single-process path."""
    if cp is not None and cp.size == 1:
        cp = None
    for module in model.modules():  # the Transformer itself and its attention layers
        if hasattr(module, "context_parallel"):
            module.context_parallel = cp


@contextmanager
def without_context_parallel(model: torch.nn.Module):
    """Run ``model`` on whole sequences on this rank alone for a while (evaluation that splits work by prompt)."""
    saved = getattr(model, "context_parallel", None)
    set_context_parallel(model, None)
    try:
        yield
    finally:
        set_context_parallel(model, saved)
