"""Lighthouse attention (Triton path) against dense causal SDPA and its floor, causal SDPA on S_sel tokens.

    PYTHONPATH=src python bench/bench_attention.py            # the issue's table: B=1 H=8 D=128 L=3 p=4 K=2048
    PYTHONPATH=src python bench/bench_attention.py --debug    # small shapes, a quick check (seconds)

Per N it prints ms (median of >= 10 after warm-up, CUDA events; bench/timing.py) for dense SDPA, the
floor, ours forward and forward+backward (eager, as a training step runs them), a per-stage breakdown
(device time of each op alone, replayed from a CUDA graph), and peak memory above the inputs, two ways: with
the caller holding q, k, v, and "in model", where q, k, v live only as long as the layer's saved tensors need.
``--json PATH`` also writes every number, with the device, versions and date, for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math

import torch
import torch.nn.functional as F
import triton
from timing import cuda_graph_time_ms, cuda_time_ms, peak_memory_gib
from torch.nn.attention import SDPBackend, sdpa_kernel

from lighthouse.ops.lighthouse import lighthouse_attention, lighthouse_geometry

FULL_NS = [32768, 65536, 131072, 262144, 524288]
DEBUG_NS = [4096, 8192]


def _sdpa(q, k, v):
    """Causal SDPA on ``[B, S, H, D]`` tensors, through the head-major view (the layout ours hands SDPA)."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        is_causal=True,
        scale=1.0 / math.sqrt(q.shape[-1]),
    )
    return out.transpose(1, 2)


def _leaves(batch, seq_len, heads, dim, count=3):
    return [
        torch.randn(batch, seq_len, heads, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(count)
    ]


def _fwd_bwd(fn, inputs, grad):
    def run():
        torch.autograd.grad(fn(*inputs), inputs, grad)

    return run


def _fwd_bwd_in_model(fn, leaves, grad):
    """fwd+bwd where q, k, v are made inside the measured region, the way a model's projections make them:
    nothing but the layer's own saved tensors keeps them alive after the forward. (In ``_fwd_bwd`` the caller
    holds q, k, v, so a layer that saves them, as dense SDPA does, gets them for free.)"""

    def run():
        out = fn(*(x.clone() for x in leaves))
        torch.autograd.grad(out, leaves, grad)

    return run


def _no_grad(fn, inputs):
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


def bench_n(seq_len: int, args) -> dict:
    batch, heads, dim, levels, p, topk = (
        args.batch,
        args.heads,
        args.dim,
        args.levels,
        args.pooling_factor,
        args.topk,
    )
    params = dict(levels=levels, pooling_factor=p, topk=topk)
    geometry = lighthouse_geometry(seq_len, levels, p, topk)
    s_sel = geometry.selected_len
    row: dict = {"N": seq_len, "S_sel": s_sel}
    big = seq_len >= 262144
    timed = dict(warmup=1 if big else 3, reps=args.reps)

    q, k, v = _leaves(batch, seq_len, heads, dim)
    grad = torch.randn_like(q)
    ours = lambda q, k, v: lighthouse_attention(q, k, v, **params)  # noqa: E731

    if seq_len <= args.max_dense_n:
        row["dense_fwd"] = cuda_time_ms(_no_grad(_sdpa, (q, k, v)), **timed)
        row["dense_fwdbwd"] = cuda_time_ms(_fwd_bwd(_sdpa, (q, k, v), grad), **timed)
        row["dense_mem_gib"] = peak_memory_gib(_fwd_bwd(_sdpa, (q, k, v), grad))
        row["dense_mem_in_model_gib"] = peak_memory_gib(_fwd_bwd_in_model(_sdpa, (q, k, v), grad))

    qs, ks, vs = _leaves(batch, s_sel, heads, dim)
    grad_s = torch.randn_like(qs)
    row["floor_fwd"] = cuda_time_ms(_no_grad(_sdpa, (qs, ks, vs)), **timed)
    row["floor_fwdbwd"] = cuda_time_ms(_fwd_bwd(_sdpa, (qs, ks, vs), grad_s), **timed)

    row["ours_fwd"] = cuda_time_ms(_no_grad(ours, (q, k, v)), **timed)
    row["ours_fwdbwd"] = cuda_time_ms(_fwd_bwd(ours, (q, k, v), grad), **timed)
    row["ours_mem_gib"] = peak_memory_gib(_fwd_bwd(ours, (q, k, v), grad))
    row["ours_mem_in_model_gib"] = peak_memory_gib(_fwd_bwd_in_model(ours, (q, k, v), grad))

    # Per stage, each op alone on the same inputs.
    ops = torch.ops.lighthouse
    with torch.no_grad():
        codes, inv = ops.select(q, k, levels, p, topk)
        picked = ops.gather(q, k, v, codes, inv, levels, p)
        o_sel = _sdpa(*picked).transpose(1, 2)
    stages = {
        "select": lambda: ops.select(q, k, levels, p, topk),
        "gather": lambda: ops.gather(q, k, v, codes, inv, levels, p),
        "scatter": lambda: ops.scatter(o_sel, inv, codes, seq_len, levels, p),
        "scatter_bwd": lambda: ops.scatter_bwd(grad, inv, levels, p, s_sel),
        "gather_bwd": lambda: ops.gather_bwd(qs, ks, vs, inv, seq_len, levels, p),
    }
    with torch.no_grad():
        for name, fn in stages.items():
            # Device time from a CUDA-graph replay: an eager call of a ~0.1 ms stage measures host overhead.
            try:
                row[f"stage_{name}"] = cuda_graph_time_ms(fn, **timed)
            except RuntimeError as err:
                row[f"stage_{name}"] = cuda_time_ms(fn, **timed)
                row[f"stage_{name}_eager_because"] = str(err)[:200]
            row[f"stage_{name}_eager"] = cuda_time_ms(fn, **timed)
    row["stage_sdpa_fwd"] = row["floor_fwd"]
    row["stage_sdpa_bwd"] = row["floor_fwdbwd"] - row["floor_fwd"]

    if seq_len == args.detail_n:
        row["sdpa_kernels_ours"] = sdpa_kernels(_fwd_bwd(ours, (q, k, v), grad))
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    floor = cuda_time_ms(_fwd_bwd(_sdpa, (qs, ks, vs), grad_s), **timed)
                    mine = cuda_time_ms(_fwd_bwd(ours, (q, k, v), grad), **timed)
                row[f"floor_fwdbwd_{backend.name}"], row[f"ours_fwdbwd_{backend.name}"] = floor, mine
            except RuntimeError as err:  # backend not available for this shape or build
                row[f"ours_fwdbwd_{backend.name}"] = f"unavailable: {str(err)[:200]}"
        # Deterministic mode: our kernels are always deterministic; this switches SDPA's backward to its
        # deterministic variant (Flash; cuDNN is excluded). Uninitialised-memory filling is left off: every
        # element of our outputs is written anyway, and it is not what this measures.
        fill = torch.utils.deterministic.fill_uninitialized_memory
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        try:
            row["ours_fwdbwd_deterministic"] = cuda_time_ms(_fwd_bwd(ours, (q, k, v), grad), **timed)
            row["floor_fwdbwd_deterministic"] = cuda_time_ms(_fwd_bwd(_sdpa, (qs, ks, vs), grad_s), **timed)
        finally:
            torch.use_deterministic_algorithms(False)
            torch.utils.deterministic.fill_uninitialized_memory = fill
    return row


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


def print_table(rows: list[dict]) -> None:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    print(
        f"{'N':>7} {'S_sel':>6} | {'dense f':>8} {'dense fb':>8} | {'floor f':>7} {'floor fb':>8} | "
        f"{'ours f':>7} {'ours fb':>8} {'fb/floor':>8} {'sel %':>6} | {'mem dense':>9} {'mem ours':>8} | "
        f"{'in model: dense':>15} {'ours':>5} GiB"
    )
    for r in rows:
        print(
            f"{r['N']:>7} {r['S_sel']:>6} | {f(r.get('dense_fwd')):>8} {f(r.get('dense_fwdbwd')):>8} | "
            f"{f(r['floor_fwd']):>7} {f(r['floor_fwdbwd']):>8} | "
            f"{f(r['ours_fwd']):>7} {f(r['ours_fwdbwd']):>8} {r['ours_fwdbwd'] / r['floor_fwdbwd']:>8.3f} "
            f"{100 * r['stage_select'] / r['ours_fwdbwd']:>6.1f} | "
            f"{f(r.get('dense_mem_gib')):>9} {f(r['ours_mem_gib']):>8} | "
            f"{f(r.get('dense_mem_in_model_gib')):>15} {f(r['ours_mem_in_model_gib']):>5}"
        )
    names = ["select", "gather", "sdpa_fwd", "scatter", "scatter_bwd", "sdpa_bwd", "gather_bwd"]
    print("stages (ms): " + " ".join(f"{n:>11}" for n in names) + "   sum")
    for r in rows:
        vals = [r[f"stage_{n}"] for n in names]
        print(f"{r['N']:>11}: " + " ".join(f"{x:>11.3f}" for x in vals) + f"   {sum(vals):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="small shapes (N 4096, 8192; H=2, D=64, K=256)")
    parser.add_argument("--ns", type=int, nargs="*", help="sequence lengths (default: the issue's)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--pooling-factor", type=int, default=4)
    parser.add_argument("--topk", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--max-dense-n", type=int, default=524288, help="skip dense SDPA above this N")
    parser.add_argument("--detail-n", type=int, default=65536, help="N for backend and determinism extras")
    parser.add_argument("--json", help="write all numbers and the environment here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py needs a CUDA GPU (on a CPU, make test runs the kernels interpreted)")
    if args.debug:
        args.heads, args.dim, args.topk, args.detail_n = 2, 64, 256, 8192
    seq_lens = args.ns or (DEBUG_NS if args.debug else FULL_NS)

    env = environment()
    print(json.dumps(env))
    rows = []
    for seq_len in seq_lens:
        try:
            rows.append(bench_n(seq_len, args))
            torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError:
            print(f"N={seq_len}: out of memory, skipped")
            torch.cuda.empty_cache()
            continue
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "config": vars(args), "rows": rows}, fh, indent=1)
    print_table(rows)


if __name__ == "__main__":
    main()
