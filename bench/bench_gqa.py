"""Grouped-query attention rows (issue 28): per_kv_group Lighthouse against the paper's per-head selection on K/V
repeated to the query heads, dense SDPA with ``enable_gqa``, and the floor (SDPA with ``enable_gqa`` on S_sel
tokens); then the dilated scorer's cost beside the norm scorer's.

    PYTHONPATH=src python bench/bench_gqa.py --json bench/gqa.json     # N 65536, 131072; H=32, H_kv=8, D=128
    PYTHONPATH=src python bench/bench_gqa.py --debug                   # small shapes, a quick check

bf16, B=1, L=3, p=4, K=2048 unless given. Per N, ms are medians of >= 10 CUDA-event timings after warm-up
(bench/timing.py); "fb" is forward + backward as a training step runs it (eager). Memory is the peak above the
inputs with q, k, v made inside the measured region ("in model", as the projections make them), so the
repeated path pays for its H-head copies of K and V and their gradients, as it does in the model.

Columns: ``pkg`` per_kv_group (norm scorer), ``rep`` the paper's selection on repeated K/V (what the model ran
before issue 28), ``dense`` causal SDPA with enable_gqa on all N, ``floor`` causal SDPA with enable_gqa on S_sel
tokens (the compacted sequence of pkg). Goals (issue 28): pkg fb <= rep fb, pkg mem <= 0.7 x rep mem, pkg fb <=
1.10 x floor fb. Dilated rows (at ``--dilated-n``): the same layers with ``scorer="dilated"`` and the scorer alone.
The SDPA kernels each path launched are recorded, to show that enable_gqa ran a fused kernel, not the math one.
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
from timing import cuda_time_ms, peak_memory_gib

from lighthouse.ops.lighthouse import lighthouse_attention, lighthouse_geometry
from lighthouse.ops.lighthouse.dilated import dilated_scores


def layers(params: dict, groups: int) -> dict:
    """The Lighthouse variants by column name, each ``(q, k, v) -> out`` with k, v at H_kv heads."""

    def per_kv_group(scorer):
        return lambda q, k, v: lighthouse_attention(q, k, v, **params, selection="per_kv_group", scorer=scorer)

    def repeated(scorer):
        def run(q, k, v):
            k, v = (x.repeat_interleave(groups, dim=2) for x in (k, v))  # what model/attention.py does for 'paper'
            return lighthouse_attention(q, k, v, **params, scorer=scorer)

        return run

    return {
        "pkg": per_kv_group("norm"),
        "rep": repeated("norm"),
        "pkg_dilated": per_kv_group("dilated"),
        "rep_dilated": repeated("dilated"),
    }


def time_scorers(q, k, v, params: dict, dilation: int, timed: dict) -> dict:
    """The scorers alone (no gradient): the dilated one's SDPA calls against the norm scorer's select kernel
    (scores and top-k; the dilated path adds its top-k on top of its scores)."""
    levels, p, topk = params["levels"], params["pooling_factor"], params["topk"]
    with torch.no_grad():
        return {
            "scorer_dilated": cuda_time_ms(lambda: dilated_scores(q, k, v, dilation), **timed),
            "scorer_norm_and_select": cuda_time_ms(lambda: torch.ops.lighthouse.select(q, k, levels, p, topk), **timed),
        }


def bench_n(seq_len: int, args) -> dict:
    batch, heads, kv_heads, dim = args.batch, args.heads, args.kv_heads, args.dim
    params = dict(levels=args.levels, pooling_factor=args.pooling_factor, topk=args.topk)
    s_sel = lighthouse_geometry(seq_len, **params).selected_len
    timed = dict(warmup=3, reps=args.reps)
    row: dict = {"N": seq_len, "S_sel": s_sel, "H": heads, "H_kv": kv_heads, "D": dim}
    q, k, v = leaves(batch, seq_len, heads, dim, kv_heads=kv_heads)
    grad = torch.randn_like(q)

    variants = layers(dict(params, dilation=args.dilation), heads // kv_heads)
    names = ["pkg", "rep"] + (["pkg_dilated", "rep_dilated"] if seq_len == args.dilated_n else [])
    for name in names:
        fn = variants[name]
        row[f"{name}_fwd"] = cuda_time_ms(no_grad(fn, (q, k, v)), **timed)
        row[f"{name}_fwdbwd"] = cuda_time_ms(fwd_bwd(fn, (q, k, v), grad), **timed)
        row[f"{name}_mem_in_model_gib"] = peak_memory_gib(fwd_bwd_in_model(fn, (q, k, v), grad))
    row["sdpa_kernels_pkg"] = sdpa_kernels(fwd_bwd(variants["pkg"], (q, k, v), grad))

    if seq_len <= args.max_dense_n:
        row["dense_fwd"] = cuda_time_ms(no_grad(sdpa, (q, k, v)), **timed)
        row["dense_fwdbwd"] = cuda_time_ms(fwd_bwd(sdpa, (q, k, v), grad), **timed)
        row["dense_mem_in_model_gib"] = peak_memory_gib(fwd_bwd_in_model(sdpa, (q, k, v), grad))

    if seq_len == args.dilated_n:
        row.update(time_scorers(q, k, v, params, args.dilation, timed))

    del q, k, v, grad
    qs, ks, vs = leaves(batch, s_sel, heads, dim, kv_heads=kv_heads)
    grad_s = torch.randn_like(qs)
    row["floor_fwd"] = cuda_time_ms(no_grad(sdpa, (qs, ks, vs)), **timed)
    row["floor_fwdbwd"] = cuda_time_ms(fwd_bwd(sdpa, (qs, ks, vs), grad_s), **timed)
    row["sdpa_kernels_floor"] = sdpa_kernels(fwd_bwd(sdpa, (qs, ks, vs), grad_s))
    return row


def print_table(rows: list[dict]) -> None:
    print(
        f"{'N':>7} {'S_sel':>6} | {'pkg fb':>7} {'rep fb':>7} {'dense fb':>8} {'floor fb':>8} | "
        f"{'pkg/rep':>7} {'pkg/floor':>9} | {'mem pkg':>7} {'mem rep':>7} {'mem dense':>9} {'pkg/rep':>7} GiB"
    )
    for r in rows:
        print(
            f"{r['N']:>7} {r['S_sel']:>6} | {cell(r['pkg_fwdbwd']):>7} {cell(r['rep_fwdbwd']):>7} "
            f"{cell(r.get('dense_fwdbwd')):>8} {cell(r['floor_fwdbwd']):>8} | "
            f"{r['pkg_fwdbwd'] / r['rep_fwdbwd']:>7.3f} {r['pkg_fwdbwd'] / r['floor_fwdbwd']:>9.3f} | "
            f"{cell(r['pkg_mem_in_model_gib']):>7} {cell(r['rep_mem_in_model_gib']):>7} "
            f"{cell(r.get('dense_mem_in_model_gib')):>9} {r['pkg_mem_in_model_gib'] / r['rep_mem_in_model_gib']:>7.3f}"
        )
    for r in rows:
        if "pkg_dilated_fwdbwd" in r:
            print(
                f"N={r['N']} scorer cost, fwd / fb ms: norm pkg {cell(r['pkg_fwd'])} / {cell(r['pkg_fwdbwd'])}, "
                f"dilated pkg {cell(r['pkg_dilated_fwd'])} / {cell(r['pkg_dilated_fwdbwd'])}; "
                f"norm rep {cell(r['rep_fwd'])} / {cell(r['rep_fwdbwd'])}, "
                f"dilated rep {cell(r['rep_dilated_fwd'])} / {cell(r['rep_dilated_fwdbwd'])}; "
                f"scorers alone: dilated {cell(r['scorer_dilated'])}, norm+select {cell(r['scorer_norm_and_select'])}"
            )


def main() -> None:
    parser = layer_parser(
        __doc__,
        debug="small shapes (N 4096, 8192; H=4, H_kv=2, D=64, K=256)",
        ns="sequence lengths (default: 65536 131072)",
        heads=32,
        max_dense_n=131072,
    )
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--dilation", type=int, default=4)
    parser.add_argument("--dilated-n", type=int, default=65536, help="N of the dilated scorer rows")
    args = parser.parse_args()
    require_cuda("bench_gqa.py")
    if args.debug:
        args.heads, args.kv_heads, args.dim, args.topk, args.dilated_n = 4, 2, 64, 256, 8192
    seq_lens = args.ns or ([4096, 8192] if args.debug else [65536, 131072])
    print_table(run_rows(seq_lens, lambda seq_len: bench_n(seq_len, args), args))


if __name__ == "__main__":
    main()
