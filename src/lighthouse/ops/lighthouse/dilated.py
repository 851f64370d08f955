"""The dilated scorer's base scores (README §2b) on the fast path: a few SDPA calls on views, no new kernel.

``naive.dilated_base_scores`` is the reference (a loop over dilation offsets, K/V expanded to the query heads);
this file computes the same numbers without copies: ``[B, N, H, D]`` viewed as ``[B, N / delta, delta * H, D]``
turns the ``delta`` interleaved subsequences into ``delta * H`` heads of one SDPA call (head ``r * H + h`` is
offset ``r`` of head ``h``), and the group's query heads are reached through strided views, so K and V are
never repeated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import row_norms


def _subsequence_heads(x: Tensor, dilation: int) -> Tensor:
    """``[B, N, h, D]`` -> ``[B, delta * h, N / delta, D]``; head ``r * h + j`` holds positions ``r, r + delta, ...``
    of head ``j`` (a view whenever the heads of one position are evenly spaced, as they are after the projections)."""
    batch, seq_len, heads, dim = x.shape
    return x.reshape(batch, seq_len // dilation, dilation * heads, dim).transpose(1, 2)


def _base_norms(out: Tensor, heads: int, dilation: int) -> Tensor:
    """SDPA output ``[B, delta * h, N / delta, D]`` -> the fp32 norms of its rows at their positions, ``[B, h, N]``."""
    batch, _, sub_len, _ = out.shape
    norms = row_norms(out).view(batch, dilation, heads, sub_len)  # position m * delta + r sits at [b, r, j, m]
    return norms.permute(0, 2, 3, 1).reshape(batch, heads, sub_len * dilation)


@torch.no_grad()
def dilated_scores(q: Tensor, k: Tensor, v: Tensor, dilation: int) -> tuple[Tensor, Tensor]:
    """Base scores ``[B, H_s, N]`` fp32 of ``q [B, N, H, D]`` and ``k, v [B, N, H_s, D]``, one row per selection
    head ``H_s`` (dividing ``H``): per query head ``||attn(q, k, v)||`` and ``||attn(k, q, v)||`` on each
    stride-``dilation`` subsequence, causal, then the max over the ``H / H_s`` query heads of each KV head."""
    batch, seq_len, heads, dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(dim)
    qd, kd, vd = (_subsequence_heads(x, dilation) for x in (q, k, v))
    # attn(q, k, v): SDPA pairs query head r * H + h with KV head (r * H + h) // group = r * H_s + h // group.
    out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=group > 1)
    score_q = _base_norms(out, heads, dilation).view(batch, kv_heads, group, seq_len).amax(dim=2)
    # attn(k, q, v): k is the query and the group's query heads the keys, one member j of every group at a time
    # (q[:, :, j::group] is query head g * group + j for KV head g), so nothing is expanded to H heads.
    score_k = None
    for j in range(group):
        out = F.scaled_dot_product_attention(
            kd, _subsequence_heads(q[:, :, j::group], dilation), vd, is_causal=True, scale=scale
        )
        norms = _base_norms(out, kv_heads, dilation)
        score_k = norms if score_k is None else torch.maximum(score_k, norms)
    return score_q, score_k
