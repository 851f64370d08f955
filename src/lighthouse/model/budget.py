"""What a model config costs in memory before anything is allocated, and how much this machine has.

``ModelConfig.validate`` refuses a config whose model cannot even be built here: building it allocates the fp32
weights and the RoPE tables in host memory (the model is moved to a GPU only afterwards), and one sequence's fp32
residual stream must exist at once somewhere (on one device, or split over this host's devices by context
parallelism). These are lower bounds: what is refused could never run here; what passes may still run out of
memory later (activations grow with the batch, optimizer state adds 8 bytes per parameter), and the memory
estimates in bench/ and the README say by how much.
"""

from __future__ import annotations

import os
from pathlib import Path

FP32 = 4
# rope_tables computes the angles in float64, then cos and sin (float64, then float32): about 12 bytes per
# (position, head_dim) entry at the peak.
ROPE_BYTES_PER_ENTRY = 12


def parameter_count(vocab_size, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_hidden, tie_embeddings) -> int:
    """Parameters of the Transformer (embedding, blocks, final norm, output projection unless tied)."""
    attention = dim * n_heads * head_dim * 2 + dim * n_kv_heads * head_dim * 2  # wq, wo; wk, wv
    block = attention + 3 * dim * ffn_hidden + 2 * dim  # SwiGLU and two RMSNorm weights
    embeddings = vocab_size * dim * (1 if tie_embeddings else 2)
    return embeddings + n_layers * block + dim


def host_memory_bytes() -> int:
    """This host's memory for one process: physical RAM, or the container's cgroup limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def device_memory_bytes() -> int:
    """Total memory of the GPUs this process sees (0 without CUDA). It initialises CUDA, which a process that
    forks workers (strategy ddp_fork) must not have done: ask only when the host alone is not enough."""
    try:
        import torch

        if not torch.cuda.is_available():
            return 0
        return sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    except Exception:  # no driver, a broken driver: count no GPU memory, the host bound still holds
        return 0


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"
