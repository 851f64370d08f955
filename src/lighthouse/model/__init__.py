"""The decoder LM in plain PyTorch (no Lightning): what a trained checkpoint is, and how it computes.

Import from the modules (``from lighthouse.model.transformer import Transformer``); like ``data/``, this package
imports nothing itself, so ``lighthouse.model.config`` stays cheap to import.

    config.py            ModelConfig, LighthouseConfig, named flavors; every size checked once, here
    transformer.py       RMSNorm, RoPE, SwiGLU, blocks, the LM and its loss
    attention.py         q/k/v projections and RoPE; the inner backend chosen by name (sdpa, lighthouse, ...)
    kv_cache.py          the cache used by generation
    memory.py            activation memory options (host offload, chunked MLP and cross-entropy)
    context_parallel.py  Ulysses all-to-all around attention
    flops.py             analytic FLOPs per token (for MFU)
"""
