"""Decoder-only LM (RMSNorm, RoPE, SwiGLU, causal attention). Torch only, no Lightning."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lighthouse.attention import Attention, rope_tables
from lighthouse.config import ModelConfig
from lighthouse.kv_cache import KVCache, LayerCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, backend: str):
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, backend)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.ffn_hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


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
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        # Not persistent: derived from the config, so checkpoints stay small and shape-independent.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

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
            cos, sin = rope_tables(self.config.head_dim, n, self.config.rope_theta)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(self.rope_sin.device)
        return self.rope_cos, self.rope_sin

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens ``[B, N]`` -> logits ``[B, N, vocab_size]``; with a cache, see :meth:`features`."""
        return self.output(self.features(tokens, cache))

    def features(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """tokens ``[B, N]`` -> final normalised hidden states ``[B, N, dim]`` (logits are ``output`` of them).

        With a cache (generation), the tokens continue the cached positions, every layer attends densely, and
        their keys and values are appended to the cache.
        """
        if cache is not None:
            return self._cached_features(tokens, cache)
        x = self.tok_embeddings(tokens)
        cos, sin = self.rope(tokens.shape[1])
        for layer in self.layers:
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
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

    def num_params(self, exclude_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n
