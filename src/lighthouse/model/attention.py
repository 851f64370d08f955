"""Causal self-attention: q/k/v projections and RoPE around an inner attention chosen by name.

Every inner backend takes and returns ``[B, N, H, D]`` (the layout right after the projections), so the
Lighthouse layers and dense SDPA are interchangeable per layer and per training stage.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lighthouse.model.config import ATTENTION_BACKENDS, LighthouseConfig, ModelConfig, RopeScaling
from lighthouse.model.context_parallel import ContextParallelGroup, head_to_seq, seq_to_head
from lighthouse.ops.lighthouse import lighthouse_attention, naive_lighthouse_attention

if TYPE_CHECKING:
    from lighthouse.model.kv_cache import LayerCache


InnerAttention = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Causal attention of ``q [B, N, H, D]`` over ``k, v [B, N, H_kv, D]`` -> ``[B, N, H, D]`` (no projections or RoPE)."""


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    # SDPA wants [B, H, N, D]; transposes are views, flash/cuDNN accept the strides.
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def _expand_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    # The paper's selection is per query head (spec: key/value heads expanded to H).
    group = q.shape[2] // k.shape[2]
    if group == 1:
        return k, v
    return k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)


class LighthouseInner:
    """A Lighthouse op with one layer's parameters bound, called like ``sdpa_attention``. The op's keyword arguments
    are LighthouseConfig's fields, name for name, so each parameter has one name from the YAML to the op; ModelConfig
    checked them once, the op checks the call (its public boundary; the sequence length is only known there)."""

    def __init__(self, op: Callable[..., Tensor], lh: LighthouseConfig):
        self.op = op
        self.params = dataclasses.asdict(lh)
        # The paper's selection is per query head: K/V repeated to H; 'per_kv_group' selects once per KV head.
        self.repeat_kv = lh.selection != "per_kv_group"

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.repeat_kv:
            k, v = _expand_kv(q, k, v)
        return self.op(q, k, v, **self.params)


INNER_ATTENTION: dict[str, Callable[[LighthouseConfig], InnerAttention]] = {
    "sdpa": lambda lh: sdpa_attention,  # dense: the Lighthouse parameters are not passed on
    "lighthouse_naive": functools.partial(LighthouseInner, naive_lighthouse_attention),
    "lighthouse": functools.partial(LighthouseInner, lighthouse_attention),
}
"""Inner attention by backend name: builds the callable a layer runs, from the layer's Lighthouse parameters."""
assert tuple(INNER_ATTENTION) == ATTENTION_BACKENDS


def rope_tables(head_dim: int, seq_len: int, theta: float, scaling: RopeScaling | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin, each ``[seq_len, head_dim // 2]`` in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    gain = 1.0
    if scaling is not None:
        inv_freq, gain = scaled_frequencies(inv_freq, scaling, theta)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    return (angles.cos() * gain).float(), (angles.sin() * gain).float()


def scaled_frequencies(inv_freq: Tensor, scaling: RopeScaling, theta: float) -> tuple[Tensor, float]:
    """(inverse frequencies ``[D/2]``, gain on cos and sin) of a context-extension scaling; the formulas of
    Hugging Face's rope_scaling types, so an imported or exported model computes the same function there."""
    kind, factor = scaling.rope_type, scaling.factor
    if kind == "default":
        return inv_freq, 1.0
    if kind == "linear":  # positions divided by factor, i.e. every frequency
        return inv_freq / factor, 1.0
    original = scaling.original_max_position_embeddings
    if kind == "llama3":
        wavelen = 2 * math.pi / inv_freq
        long_wave, short_wave = original / scaling.low_freq_factor, original / scaling.high_freq_factor
        # 1 where a wavelength is short enough to keep, 0 where it is fully interpolated, linear in between.
        keep = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        keep = torch.where(wavelen < short_wave, 1.0, torch.where(wavelen > long_wave, 0.0, keep))
        return keep * inv_freq + (1 - keep) * inv_freq / factor, 1.0
    # yarn: dimension d is kept (extrapolated) when it turns more than beta_fast times over the original context,
    # interpolated when less than beta_slow times, and mixed linearly in the dimension index between the two.
    half = inv_freq.shape[0]
    dim = 2 * half

    def dim_of(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(scaling.beta_fast), dim_of(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    interpolate = ((torch.arange(half, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / factor * interpolate + inv_freq * (1 - interpolate)
    gain = scaling.attention_factor
    if gain is None:
        gain = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, gain


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) of ``x`` [B, N, H, D] by position-dependent angles; fp32 math."""
    half = x.shape[-1] // 2
    x1, x2 = x.float().split(half, dim=-1)
    cos, sin = cos[: x.shape[1], None, :], sin[: x.shape[1], None, :]  # [N, 1, D/2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, backend: str):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        # Each backend's inner attention, built once: switching back (a phase change, dense validation) finds the
        # same object, so compiled blocks keep their graphs.
        self._inners = {name: build(config.lighthouse) for name, build in INNER_ATTENTION.items()}
        self.wq = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.backend = backend
        # Set by lighthouse.model.context_parallel.set_context_parallel: x is then this rank's slice of the sequence.
        self.context_parallel: ContextParallelGroup | None = None

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in INNER_ATTENTION:
            raise ValueError(f"attention backend {name!r} is not one of {tuple(INNER_ATTENTION)}")
        self._backend = name
        self._inner = self._inners[name]

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: LayerCache | None = None) -> Tensor:
        """x ``[B, N, dim]``; cos/sin start at the position of x's first token. With a cache (generation), the
        attention is dense over the cached positions and these, whatever the layer's backend. With a context
        parallel group, x is this rank's slice ``[B, N/cp, dim]`` and cos/sin start at the slice's first position."""
        B, N, _ = x.shape
        q = apply_rope(self.wq(x).view(B, N, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.wk(x).view(B, N, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(B, N, self.n_kv_heads, self.head_dim)
        cp = self.context_parallel
        if cache is None and cp is not None:
            # RoPE ran above on the slice, with the slice's global positions: the same work as after the
            # exchange (N/cp positions x H heads either way), and no full-length table view is needed.
            q, k, v = (seq_to_head(t, cp) for t in (q, k, v))  # [B, N, H/cp, D], KV heads [B, N, H_kv/cp, D]
            out = head_to_seq(self._inner(q, k, v), cp)  # [B, N/cp, H, D]
        elif cache is None:
            out = self._inner(q, k, v)  # [B, N, H, D]
        else:
            out = cache.attend(q, k, v)
        return self.wo(out.reshape(B, N, self.n_heads * self.head_dim))
