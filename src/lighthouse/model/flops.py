"""Analytic training FLOPs per token and peak device rates, for MFU.

Counting rule (as in nanoGPT/PaLM, attention halved for causality): a matmul of an [m, k] by a [k, n] matrix
costs 2*m*k*n FLOPs forward and twice that backward, so a token costs 6 FLOPs per weight it touches; causal
attention over N positions with H heads of width D costs 2 matmuls * 2*N*D per head forward, halved by the
mask, i.e. 6*N*H*D per token per layer for forward plus backward. A Lighthouse layer runs that attention on
the S_sel compacted entries instead of N positions: 6*S_sel^2*H*D per sequence, so 6*S_sel^2/N*H*D per token.
Pooling, selection, gather and scatter are memory-bound and not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lighthouse.model.config import ModelConfig
from lighthouse.ops.lighthouse.geometry import lighthouse_geometry

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendor datasheets, for the GPUs where Lightning's table
# (lightning.fabric.utilities.throughput.get_available_flops) does not give that figure: it finds no row for the
# name "NVIDIA H200" and lists the sparse figures for H200 SXM/NVL and H100 NVL, and it reads "L40S" as an L4.
# Matched in order against the lower-cased torch.cuda.get_device_name(); everything else comes from Lightning
# (H100 SXM 989, H100 PCIe 756, A100 312, ...).
PEAK_TFLOPS_OVERRIDES = (("h200 nvl", 835.0), ("h200", 989.0), ("h100 nvl", 835.0), ("l40s", 362.0))


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
            lh = config.lighthouse
            s_sel = lighthouse_geometry(seq_len, lh.levels, lh.pooling_factor, lh.topk).selected_len
            actual += 6.0 * s_sel * s_sel / seq_len * config.n_heads * config.head_dim
    return dense, actual


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting ('bf16-mixed', '16-mixed', '32-true', ...)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def peak_flops_per_device(override_tflops: float | None = None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Peak FLOP/s of the current CUDA device for ``dtype``, or None where unknown (then MFU is not reported)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    if dtype in (torch.bfloat16, torch.float16):
        for key, tflops in PEAK_TFLOPS_OVERRIDES:
            if key in name:
                return tflops * 1e12
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(torch.device("cuda", torch.cuda.current_device()), dtype)
    return float(flops) if flops else None
