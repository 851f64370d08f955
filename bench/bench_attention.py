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

import torch
from layer_bench import (
    cell,
    fwd_bwd,
    fwd_bwd_in_model,
    layer_parser,
    leaves,
    no_grad,
    require_cuda,
    run_rows,
    sdpa,
    sdpa_kernels,
)
from timing import cuda_graph_time_ms, cuda_time_ms, peak_memory_gib
from torch.nn.attention import SDPBackend, sdpa_kernel

from lighthouse.ops.lighthouse import lighthouse_attention, lighthouse_geometry

FULL_NS = [32768, 65536, 131072, 262144, 524288]
DEBUG_NS = [4096, 8192]


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

    q, k, v = leaves(batch, seq_len, heads, dim)
    grad = torch.randn_like(q)
    ours = lambda q, k, v: lighthouse_attention(q, k, v, **params)  # noqa: E731

    if seq_len <= args.max_dense_n:
        row["dense_fwd"] = cuda_time_ms(no_grad(sdpa, (q, k, v)), **timed)
        row["dense_fwdbwd"] = cuda_time_ms(fwd_bwd(sdpa, (q, k, v), grad), **timed)
        row["dense_mem_gib"] = peak_memory_gib(fwd_bwd(sdpa, (q, k, v), grad))
        row["dense_mem_in_model_gib"] = peak_memory_gib(fwd_bwd_in_model(sdpa, (q, k, v), grad))

    qs, ks, vs = leaves(batch, s_sel, heads, dim)
    grad_s = torch.randn_like(qs)
    row["floor_fwd"] = cuda_time_ms(no_grad(sdpa, (qs, ks, vs)), **timed)
    row["floor_fwdbwd"] = cuda_time_ms(fwd_bwd(sdpa, (qs, ks, vs), grad_s), **timed)

    row["ours_fwd"] = cuda_time_ms(no_grad(ours, (q, k, v)), **timed)
    row["ours_fwdbwd"] = cuda_time_ms(fwd_bwd(ours, (q, k, v), grad), **timed)
    row["ours_mem_gib"] = peak_memory_gib(fwd_bwd(ours, (q, k, v), grad))
    row["ours_mem_in_model_gib"] = peak_memory_gib(fwd_bwd_in_model(ours, (q, k, v), grad))

    # Per stage, each op alone on the same inputs.
    ops = torch.ops.lighthouse
    with torch.no_grad():
        codes, inv = ops.select(q, k, levels, p, topk)
        picked = ops.gather(q, k, v, codes, inv, levels, p)
        o_sel = sdpa(*picked).transpose(1, 2)
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
    if args.causal:
        # README §8b's strictly causal selection: the reference's PyTorch selection inside the same gather / SDPA /
        # scatter kernels. Eager only: its boolean masks synchronise with the host, so no CUDA graph.
        causal = lambda q, k, v: lighthouse_attention(q, k, v, **params, causal=True)  # noqa: E731
        row["causal_fwd"] = cuda_time_ms(no_grad(causal, (q, k, v)), **timed)
        row["causal_fwdbwd"] = cuda_time_ms(fwd_bwd(causal, (q, k, v), grad), **timed)
        row["causal_mem_gib"] = peak_memory_gib(fwd_bwd(causal, (q, k, v), grad))
        with torch.no_grad():
            row["stage_select_causal"] = cuda_time_ms(
                lambda: ops.select_causal(q, k, None, levels, p, topk, "norm", 4), **timed
            )
    row["stage_sdpa_fwd"] = row["floor_fwd"]
    row["stage_sdpa_bwd"] = row["floor_fwdbwd"] - row["floor_fwd"]

    if seq_len == args.detail_n:
        row["sdpa_kernels_ours"] = sdpa_kernels(fwd_bwd(ours, (q, k, v), grad))
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            try:
                with sdpa_kernel([backend]):
                    floor = cuda_time_ms(fwd_bwd(sdpa, (qs, ks, vs), grad_s), **timed)
                    mine = cuda_time_ms(fwd_bwd(ours, (q, k, v), grad), **timed)
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
            row["ours_fwdbwd_deterministic"] = cuda_time_ms(fwd_bwd(ours, (q, k, v), grad), **timed)
            row["floor_fwdbwd_deterministic"] = cuda_time_ms(fwd_bwd(sdpa, (qs, ks, vs), grad_s), **timed)
        finally:
            torch.use_deterministic_algorithms(False)
            torch.utils.deterministic.fill_uninitialized_memory = fill
    return row


def print_table(rows: list[dict]) -> None:
    print(
        f"{'N':>7} {'S_sel':>6} | {'dense f':>8} {'dense fb':>8} | {'floor f':>7} {'floor fb':>8} | "
        f"{'ours f':>7} {'ours fb':>8} {'fb/floor':>8} {'sel %':>6} | {'mem dense':>9} {'mem ours':>8} | "
        f"{'in model: dense':>15} {'ours':>5} GiB"
    )
    for r in rows:
        print(
            f"{r['N']:>7} {r['S_sel']:>6} | {cell(r.get('dense_fwd')):>8} {cell(r.get('dense_fwdbwd')):>8} | "
            f"{cell(r['floor_fwd']):>7} {cell(r['floor_fwdbwd']):>8} | "
            f"{cell(r['ours_fwd']):>7} {cell(r['ours_fwdbwd']):>8} {r['ours_fwdbwd'] / r['floor_fwdbwd']:>8.3f} "
            f"{100 * r['stage_select'] / r['ours_fwdbwd']:>6.1f} | "
            f"{cell(r.get('dense_mem_gib')):>9} {cell(r['ours_mem_gib']):>8} | "
            f"{cell(r.get('dense_mem_in_model_gib')):>15} {cell(r['ours_mem_in_model_gib']):>5}"
        )
    for r in rows:
        if "causal_fwdbwd" in r:
            print(
                f"causal selection (§8b), N={r['N']}: fwd {cell(r['causal_fwd'])} fwd+bwd {cell(r['causal_fwdbwd'])} "
                f"ms ({r['causal_fwdbwd'] / r['ours_fwdbwd']:.2f}x the paper's rule, "
                f"{r['causal_fwdbwd'] / r['floor_fwdbwd']:.2f}x the floor), select {cell(r['stage_select_causal'])} "
                f"ms (kernel {cell(r['stage_select'])}), peak {cell(r['causal_mem_gib'])} GiB"
            )
    names = ["select", "gather", "sdpa_fwd", "scatter", "scatter_bwd", "sdpa_bwd", "gather_bwd"]
    print("stages (ms): " + " ".join(f"{n:>11}" for n in names) + "   sum")
    for r in rows:
        vals = [r[f"stage_{n}"] for n in names]
        print(f"{r['N']:>11}: " + " ".join(f"{x:>11.3f}" for x in vals) + f"   {sum(vals):.3f}")


def main() -> None:
    parser = layer_parser(
        __doc__,
        debug="small shapes (N 4096, 8192; H=2, D=64, K=256)",
        ns="sequence lengths (default: the issue's)",
        heads=8,
        max_dense_n=524288,
    )
    parser.add_argument("--detail-n", type=int, default=65536, help="N for backend and determinism extras")
    parser.add_argument("--causal", action="store_true", help="also time the strictly causal selection (README §8b)")
    args = parser.parse_args()
    require_cuda("bench_attention.py")
    if args.debug:
        args.heads, args.dim, args.topk, args.detail_n = 2, 64, 256, 8192
    seq_lens = args.ns or (DEBUG_NS if args.debug else FULL_NS)
    print_table(run_rows(seq_lens, lambda seq_len: bench_n(seq_len, args), args))


if __name__ == "__main__":
    main()
