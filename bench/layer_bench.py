"""What the attention-layer benchmarks (bench_attention.py, bench_gqa.py) share: their inputs, the closures they
time, the SDPA baseline, the shape options, the environment record and the loop over sequence lengths.

Timing itself lives in timing.py; this module only decides what is timed and how the rows are collected.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton


def sdpa(q, k, v):
    """Causal SDPA on ``q [B, S, H, D]`` and ``k, v [B, S, H_kv, D]``, through the head-major view (the layout
    Lighthouse hands SDPA); ``enable_gqa`` only where K/V have fewer heads, so equal heads run plain SDPA."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        scale=1.0 / math.sqrt(q.shape[-1]),
        enable_gqa=q.shape[2] != k.shape[2],
    )
    return out.transpose(1, 2)


def leaves(batch: int, seq_len: int, heads: int, dim: int, kv_heads: int | None = None) -> list[torch.Tensor]:
    """Random bf16 ``q [B, S, H, D]``, ``k, v [B, S, H_kv, D]`` on the GPU that take gradients (H_kv = H by
    default), drawn in the order q, k, v."""

    def leaf(h):
        return torch.randn(batch, seq_len, h, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    kv_heads = heads if kv_heads is None else kv_heads
    return [leaf(heads), leaf(kv_heads), leaf(kv_heads)]


def fwd_bwd(fn, inputs, grad):
    def run():
        torch.autograd.grad(fn(*inputs), inputs, grad)

    return run


def fwd_bwd_in_model(fn, leaves, grad):
    """fwd+bwd where q, k, v are made inside the measured region, the way a model's projections make them:
    nothing but the layer's own saved tensors keeps them alive after the forward. (In ``fwd_bwd`` the caller
    holds q, k, v, so a layer that saves them, as dense SDPA does, gets them for free.)"""

    def run():
        out = fn(*(x.clone() for x in leaves))
        torch.autograd.grad(out, leaves, grad)

    return run


def no_grad(fn, inputs):
    def run():
        with torch.no_grad():
            fn(*inputs)

    return run


def sdpa_kernels(fn) -> list[str]:
    """Names of the attention kernels that ``fn`` launches (to record which SDPA backend ran)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    keys = ("flash", "fmha", "cudnn", "sdpa", "attn", "attention", "fprop", "dgrad")
    names = {e.key for e in prof.key_averages() if any(s in e.key.lower() for s in keys)}
    return sorted(names)


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": datetime.date.today().isoformat(),
    }


def cell(x: float | None) -> str:
    """A table cell: milliseconds or GiB to two decimals, ``-`` where the row has no such number."""
    return "-" if x is None else f"{x:.2f}"


def layer_parser(doc: str, *, debug: str, ns: str, heads: int, max_dense_n: int) -> argparse.ArgumentParser:
    """The options every layer benchmark takes; a script adds its own after these."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=debug)
    parser.add_argument("--ns", type=int, nargs="*", help=ns)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=heads)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--pooling-factor", type=int, default=4)
    parser.add_argument("--topk", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--max-dense-n", type=int, default=max_dense_n, help="skip dense SDPA above this N")
    parser.add_argument("--json", help="write all numbers and the environment here")
    return parser


def require_cuda(script: str) -> None:
    if not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA GPU (on a CPU, make test runs the kernels interpreted)")


def run_rows(seq_lens: list[int], bench_n: Callable[[int], dict], args: argparse.Namespace) -> list[dict]:
    """``bench_n`` for every N, printing the environment and each row as JSON lines as they come (an N that runs
    out of memory is skipped and said so); ``--json`` gets them all with the environment and the options."""
    env = environment()
    print(json.dumps(env))
    rows = []
    for seq_len in seq_lens:
        try:
            rows.append(bench_n(seq_len))
        except torch.cuda.OutOfMemoryError:
            print(f"N={seq_len}: out of memory, skipped")
            continue
        finally:
            torch.cuda.empty_cache()  # the next N starts from an empty cache either way
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "config": vars(args), "rows": rows}, fh, indent=1)
    return rows
