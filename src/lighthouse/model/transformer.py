"""Decoder-only LM (RMSNorm, RoPE, SwiGLU, causal attention). Torch only, no Lightning."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lighthouse.model.attention import Attention, rope_tables
from lighthouse.model.config import PREFIX, ModelConfig
from lighthouse.model.kv_cache import KVCache, LayerCache
from lighthouse.model.memory import HostOffload, chunked_cross_entropy


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, chunk_tokens: int | None = None):
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)
        self.chunk_tokens = chunk_tokens

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.chunk_tokens is None or x.shape[1] <= self.chunk_tokens:
            return self.feed_forward(x)
        pieces = x.split(self.chunk_tokens, dim=1)  # [B, chunk, dim] views
        if not torch.is_grad_enabled():
            return torch.cat([self.feed_forward(piece) for piece in pieces], dim=1)
        # Each piece recomputed in the backward: only one piece's [B, chunk, hidden] intermediates are alive.
        return torch.cat([checkpoint(self.feed_forward, piece, use_reentrant=False) for piece in pieces], dim=1)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, backend: str):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, backend)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.ffn_hidden, config.mlp_chunk_tokens)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None) -> Tensor:
        # A block input kept in bf16 (checkpoint_dtype) joins the residual stream in the parameters' dtype again.
        x = x.to(self.ffn_norm.weight.dtype)
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


def warn_about_selection(config: ModelConfig) -> None:
    """Say so when the context is too short for the configured top-k (fewer tiles, a smaller effective K), and when
    the compacted sequence is no shorter than the context (a Lighthouse layer then costs more than a dense one)."""
    if not config.uses_lighthouse():
        return
    lh, geometry = config.lighthouse, config.lighthouse_geometry()
    share = f"S_sel = {geometry.selected_len}, {geometry.selected_len / config.seq_len:.0%} of the context"
    if geometry.effective_topk < lh.topk:
        warnings.warn(
            f"{PREFIX}lighthouse.topk={lh.topk} does not fit {config.seq_len} positions: every tile needs "
            f"{128 * geometry.coarse_span} of them, so the layers use {geometry.num_tiles} tiles and an effective "
            f"top-k of {geometry.effective_topk} ({share}). Set topk to {geometry.effective_topk} or less to make "
            "that explicit.",
            stacklevel=3,
        )
    if geometry.selected_len >= config.seq_len:
        warnings.warn(
            f"the Lighthouse layers attend over as many entries as dense attention or more ({share}; "
            f"{PREFIX}lighthouse levels={lh.levels}, pooling_factor={lh.pooling_factor}, topk={lh.topk}): they save "
            "nothing at this context. Lower topk or levels, raise the context, or make these layers dense.",
            stacklevel=3,
        )


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dense_layers = frozenset(config.dense_layers)
        self.layers = nn.ModuleList(
            Block(config, "sdpa" if i in self.dense_layers else config.attention) for i in range(config.n_layers)
        )
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(config.head_dim, config.seq_len, config.rope_theta, config.rope_scaling)
        # Not persistent: derived from the config, so checkpoints stay small and shape-independent.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()
        warn_about_selection(config)
        # Set by lighthouse.model.context_parallel.set_context_parallel: inputs are then this rank's sequence slice.
        self.context_parallel = None

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue
            # Residual-branch outputs scaled down so the residual stream's variance stays O(1) with depth.
            scale = 1 / math.sqrt(2 * self.config.n_layers) if name.endswith(("wo.weight", "w_down.weight")) else 1
            nn.init.normal_(param, mean=0.0, std=std * scale)

    def compile_blocks(self) -> None:
        """torch.compile each block in place (fuses RMSNorm, RoPE and SwiGLU's elementwise work); the blocks share
        one compiled graph, and parameter names, hence checkpoints, stay those of the eager model."""
        for layer in self.layers:
            layer.compile()

    @property
    def attention_backends(self) -> list[str]:
        return [layer.attention.backend for layer in self.layers]

    def set_attention_backend(self, name: str) -> None:
        """Switch every non-dense layer to ``name`` (e.g. 'sdpa' for the recovery stage)."""
        for i, layer in enumerate(self.layers):
            if i not in self.dense_layers:
                layer.attention.backend = name

    def rope(self, seq_len: int) -> tuple[Tensor, Tensor]:
        """RoPE tables covering ``seq_len`` positions; inputs longer than the training length (evaluation,
        generation) extend them once, the same formula at more positions. Tables of a model cast to a low
        precision (``model.bfloat16()`` for inference) are recomputed in fp32, as RoPE's fp32 math expects."""
        if seq_len > self.rope_cos.shape[0] or self.rope_cos.dtype != torch.float32:
            n = max(seq_len, self.rope_cos.shape[0])
            cos, sin = rope_tables(self.config.head_dim, n, self.config.rope_theta, self.config.rope_scaling)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        return self.rope_cos, self.rope_sin

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens ``[B, N]`` -> logits ``[B, N, vocab_size]``; with a cache, see :meth:`features`."""
        return self.output(self.features(tokens, cache))

    def features(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens ``[B, N]`` -> final normalised hidden states ``[B, N, dim]`` (logits are ``output`` of them).

        With a context-parallel group set (lighthouse.model.context_parallel), tokens are this rank's slice
        ``[B, N/cp]`` of the sequence and so are the hidden states.

        With a cache (generation), the tokens continue the cached positions, every layer attends densely, and
        their keys and values are appended to the cache.
        """
        if cache is not None:
            return self._cached_features(tokens, cache)
        x = self.tok_embeddings(tokens)
        cp = self.context_parallel
        if cp is None:
            cos, sin = self.rope(tokens.shape[1])
        else:  # RoPE at the slice's global positions
            cos, sin = self.rope(tokens.shape[1] * cp.size)
            at = cp.positions(tokens.shape[1])
            cos, sin = cos[at], sin[at]
        config = self.config
        checkpointing = config.activation_checkpointing and self.training and torch.is_grad_enabled()
        if not checkpointing:
            for layer in self.layers:
                x = layer(x, cos, sin)
            return self.norm(x)
        keep_dtype = torch.bfloat16 if config.checkpoint_dtype == "bfloat16" else None
        # What checkpointing keeps per block is its input; HostOffload moves exactly those to the host.
        with HostOffload(keep=(cos, sin)) if config.checkpoint_offload else nullcontext():
            for layer in self.layers:
                if keep_dtype is not None:
                    x = x.to(keep_dtype)
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
        return self.norm(x)

    def _cached_features(self, tokens: Tensor, cache: KVCache) -> Tensor:
        start, n = cache.length, tokens.shape[1]
        cache.reserve(n)
        cos, sin = self.rope(start + n)
        cos, sin = cos[start:], sin[start:]  # RoPE at the tokens' own positions
        x = self.tok_embeddings(tokens)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, cache.layer(i))
        cache.advance(n)
        return self.norm(x)

    def token_losses(self, tokens: Tensor) -> Tensor:
        """Per-token next-token cross-entropy ``[B, N]`` (fp32) for a window ``tokens`` ``[B, N + 1]``; with
        ``loss_chunk_tokens`` the logits are made and consumed in chunks, never for the whole window. With a
        context-parallel group set, the losses ``[B, N/cp]`` of this rank's slice of the window."""
        if self.context_parallel is not None:
            tokens = self.context_parallel.shard(tokens)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        chunk = self.config.loss_chunk_tokens
        if chunk is None:
            logits = self(inputs)
            losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
        else:
            hidden = self.features(inputs)  # [B, N, dim]
            losses = chunked_cross_entropy(hidden.flatten(0, 1), self.output.weight, targets.flatten(), chunk)
        return losses.view_as(targets)

    def num_params(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n


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
