"""Analytic training FLOPs per token, for MFU (the device peaks are lighthouse.train.device_peak).

Counting rule (as in nanoGPT/PaLM, attention halved for causality): a matmul of an [m, k] by a [k, n] matrix
costs 2*m*k*n FLOPs forward and twice that backward, so a token costs 6 FLOPs per weight it touches; causal
attention over N positions with H heads of width D costs 2 matmuls * 2*N*D per head forward, halved by the
mask, i.e. 6*N*H*D per token per layer for forward plus backward. A Lighthouse layer runs that attention on
the S_sel compacted entries instead of N positions: 6*S_sel^2*H*D per sequence, so 6*S_sel^2/N*H*D per token.
Pooling, selection, gather and scatter are memory-bound and not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

from lighthouse.model.config import ModelConfig


def matmul_params(config: ModelConfig) -> int:
    """Weights that every token multiplies: attention and MLP projections of all blocks and the output layer."""
    d, hd = config.dim, config.head_dim
    attn = d * config.n_heads * hd * 2 + d * config.n_kv_heads * hd * 2  # wq, wo, wk, wv
    mlp = 3 * d * config.ffn_hidden
    return config.n_layers * (attn + mlp) + d * config.vocab_size


def flops_per_token(config: ModelConfig, seq_len: int, backends: Sequence[str]) -> tuple[float, float]:
    """Training FLOPs per token: (dense-equivalent, actual). ``backends`` is each layer's attention backend."""
    weights = 6.0 * matmul_params(config)
    per_layer_dense = 6.0 * seq_len * config.n_heads * config.head_dim
    dense = weights + config.n_layers * per_layer_dense
    actual = weights
    for backend in backends:
        if backend == "sdpa":
            actual += per_layer_dense
        else:
            s_sel = config.lighthouse_geometry(seq_len).selected_len
            actual += 6.0 * s_sel * s_sel / seq_len * config.n_heads * config.head_dim
    return dense, actual
