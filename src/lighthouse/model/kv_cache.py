"""Key/value cache for incremental decoding: every layer attends densely over the cached and the new positions.

Generation always runs dense attention, whatever backend trained the model: a recovered model is a dense model,
and a stage-1 model's weights are valid for dense attention too (only its quality is not recovered).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lighthouse.model.config import ModelConfig


def attend_from(q: Tensor, k: Tensor, v: Tensor, start: int) -> Tensor:
    """Causal dense attention of queries at positions ``[start, start + N)`` over keys at ``[0, start + N)``.

    q ``[B, N, H, D]``, k and v ``[B, start + N, H_kv, D]`` -> ``[B, N, H, D]``.
    """
    n, total = q.shape[1], k.shape[1]
    mask = None
    if start and n > 1:
        # SDPA's is_causal aligns the mask top-left (query i sees keys <= i), wrong once keys run ahead of queries.
        mask = torch.arange(total, device=q.device)[None, :] <= start + torch.arange(n, device=q.device)[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        is_causal=start == 0 and n > 1,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


class LayerCache:
    """One layer's view of a :class:`KVCache`: appends the new keys and values, then attends over all of them."""

    def __init__(self, keys: Tensor, values: Tensor, start: int):
        self.keys, self.values, self.start = keys, values, start  # keys, values [B, max_len, H_kv, D]

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        end = self.start + q.shape[1]
        self.keys[:, self.start : end] = k
        self.values[:, self.start : end] = v
        return attend_from(q, self.keys[:, :end], self.values[:, :end], self.start)


class KVCache:
    """Keys (after RoPE) and values of positions ``[0, length)`` for every layer, preallocated for ``max_len``
    positions so that decoding writes in place instead of concatenating."""

    def __init__(
        self, config: ModelConfig, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ):
        if max_len < 1:
            raise ValueError(f"KVCache max_len={max_len} must be >= 1")
        shape = (config.n_layers, batch_size, max_len, config.n_kv_heads, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def layer(self, index: int) -> LayerCache:
        return LayerCache(self.keys[index], self.values[index], self.length)

    def reserve(self, n_new: int) -> None:
        """Check that ``n_new`` more positions fit (before any layer writes)."""
        if self.length + n_new > self.max_len:
            raise ValueError(
                f"KV cache holds {self.max_len} positions: {self.length} cached + {n_new} new do not fit; "
                f"make the cache longer (prompt + new tokens)"
            )

    def advance(self, n_new: int) -> None:
        self.length += n_new
