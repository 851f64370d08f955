"""Triton kernels that build the compacted q, k, v from the base tensors (README §1, §5), and their backward.

The pyramid is never materialised. Both kernels walk the BASE rows, so q, k, v (and dq, dk, dv) are read
(written) exactly once, in order:

``_gather_fwd_kernel``  one program per (block of SUB base rows, batch*head, chunk of D). SUB is a multiple
                        of the coarsest span, so every entry's span lies inside one program: it sums the
                        rows of each span of every level (a small matmul on the tensor cores, fp32
                        accumulation) and writes the mean to the entry's compacted slot, if the entry
                        was emitted (``inv`` >= 0).
``_gather_bwd_kernel``  one program per (block of base rows, batch*head): row ``n`` receives, from every
                        level ``l``, ``d_sel[inv_l[n // c_l]] / c_l`` if that entry was emitted.
``_gather_bwd_group_kernel``  the same for ``per_kv_group``: one program per (block of base rows, batch*KV
                        head) writes dk, dv of that KV head and dq of its query heads.
With ``per_kv_group`` the forward's programs run per KV head and pool its query heads to the same slots.
Each output element is written by one program, once: no atomics, bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    base_row_block,
    compacted_head,
    inverse_map_row,
    level_constexprs,
    pool_blocking,
    pool_to_slots,
    pooling_block,
    rows_per_program,
    store_base_rows,
)
from .geometry import total_entries


@triton.jit
def _gather_fwd_kernel(
    q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, vs_ptr, inv_ptr,
    N, N_TOT, S_SEL, H,
    stride_b, stride_n, stride_h,
    sq_b, sq_n, sq_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, SUB: tl.constexpr, POOL_ROWS: tl.constexpr, LEVELS: tl.constexpr,
    LOG2P: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    # H: selection heads = k's and v's heads (strides stride_*); q has H * GROUP heads (strides sq_*), and its
    # heads h * GROUP .. h * GROUP + GROUP - 1 use selection h (GROUP = 1: the paper's per-head selection).
    b, h, m0, d, dmask = pooling_block(H, SUB, BLOCK_D, D)
    rows = m0 + tl.arange(0, SUB)
    src = b.to(tl.int64) * stride_b + h * stride_h + rows.to(tl.int64)[:, None] * stride_n + d[None, :]
    src_q = b.to(tl.int64) * sq_b + (h * GROUP) * sq_h + rows.to(tl.int64)[:, None] * sq_n + d[None, :]
    # All three loads first, so they are in flight together.
    xq = tl.load(q_ptr + src_q, mask=dmask[None, :], other=0.0)
    xk = tl.load(k_ptr + src, mask=dmask[None, :], other=0.0)
    xv = tl.load(v_ptr + src, mask=dmask[None, :], other=0.0)
    inv_row = inverse_map_row(inv_ptr, b, h, H, N_TOT)
    dst = compacted_head(b, h, S_SEL, H, D)  # k, v outputs [B, S_sel, H, D], contiguous
    dst_q = compacted_head(b, h * GROUP, S_SEL, H * GROUP, D)  # q output [B, S_sel, H * GROUP, D]
    pool_to_slots(xq, m0, qs_ptr + dst_q, inv_row, N, H * GROUP * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)
    for j in tl.static_range(1, GROUP):  # the group's other query heads: same selection, same slots
        xq = tl.load(q_ptr + src_q + j * sq_h, mask=dmask[None, :], other=0.0)
        pool_to_slots(xq, m0, qs_ptr + dst_q + j * D, inv_row, N, H * GROUP * D, d, dmask,
                      SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)  # fmt: skip
    pool_to_slots(xk, m0, ks_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)
    pool_to_slots(xv, m0, vs_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)


@triton.jit
def _unpool_rows(dsel_ptr, base, s_s, inv_row, n, live, d, dmask, N, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 LEVELS: tl.constexpr, LOG2P: tl.constexpr):  # fmt: skip
    """Gradient of base rows ``n`` from one head's compacted gradient: ``sum_l d_sel[inv_l[n // c_l]] / c_l``."""
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    off = N * 0
    n_level = N
    for lv in tl.static_range(LEVELS):
        slot = tl.load(inv_row + off + (n >> (LOG2P * lv)), mask=live, other=-1).to(tl.int64)
        mask = (slot >= 0)[:, None] & dmask[None, :]
        weight = 1.0 / (1 << (LOG2P * lv))  # exact: c_l is a power of two
        acc += tl.load(dsel_ptr + base + slot[:, None] * s_s + d[None, :], mask=mask, other=0.0).to(tl.float32) * weight
        off += n_level
        n_level = n_level // (1 << LOG2P)
    return acc


@triton.jit
def _gather_bwd_kernel(
    dqs_ptr, dks_ptr, dvs_ptr, dq_ptr, dk_ptr, dv_ptr, inv_ptr,
    N, N_TOT, H,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    LEVELS: tl.constexpr, LOG2P: tl.constexpr,
):  # fmt: skip
    b, h, n, live, d, dmask = base_row_block(N, H, BLOCK_N, BLOCK_D, D)
    inv_row = inverse_map_row(inv_ptr, b, h, H, N_TOT)
    base_q = b.to(tl.int64) * sq_b + h * sq_h
    base_k = b.to(tl.int64) * sk_b + h * sk_h
    base_v = b.to(tl.int64) * sv_b + h * sv_h
    acc_q = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    acc_k = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    off = N * 0
    n_level = N
    for lv in tl.static_range(LEVELS):
        slot = tl.load(inv_row + off + (n >> (LOG2P * lv)), mask=live, other=-1).to(tl.int64)
        mask = (slot >= 0)[:, None] & dmask[None, :]
        weight = 1.0 / (1 << (LOG2P * lv))  # exact: c_l is a power of two
        acc_q += (
            tl.load(dqs_ptr + base_q + slot[:, None] * sq_s + d[None, :], mask=mask, other=0.0).to(tl.float32) * weight
        )
        acc_k += (
            tl.load(dks_ptr + base_k + slot[:, None] * sk_s + d[None, :], mask=mask, other=0.0).to(tl.float32) * weight
        )
        acc_v += (
            tl.load(dvs_ptr + base_v + slot[:, None] * sv_s + d[None, :], mask=mask, other=0.0).to(tl.float32) * weight
        )
        off += n_level
        n_level = n_level // (1 << LOG2P)
    store_base_rows(dq_ptr, acc_q, b, h, n, live, d, dmask, N, H, D)
    store_base_rows(dk_ptr, acc_k, b, h, n, live, d, dmask, N, H, D)
    store_base_rows(dv_ptr, acc_v, b, h, n, live, d, dmask, N, H, D)


@triton.jit
def _gather_bwd_group_kernel(
    dqs_ptr, dks_ptr, dvs_ptr, dq_ptr, dk_ptr, dv_ptr, inv_ptr,
    N, N_TOT, H,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    LEVELS: tl.constexpr, LOG2P: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    """per_kv_group: one program per (block of base rows, batch * KV head): dk, dv of KV head h and dq of its
    GROUP query heads, which share its inverse map (the per-head kernel above is the GROUP = 1 case)."""
    b, h, n, live, d, dmask = base_row_block(N, H, BLOCK_N, BLOCK_D, D)
    inv_row = inverse_map_row(inv_ptr, b, h, H, N_TOT)
    acc = _unpool_rows(dks_ptr, b.to(tl.int64) * sk_b + h * sk_h, sk_s, inv_row, n, live, d, dmask, N,
                       BLOCK_N, BLOCK_D, LEVELS, LOG2P)  # fmt: skip
    store_base_rows(dk_ptr, acc, b, h, n, live, d, dmask, N, H, D)
    acc = _unpool_rows(dvs_ptr, b.to(tl.int64) * sv_b + h * sv_h, sv_s, inv_row, n, live, d, dmask, N,
                       BLOCK_N, BLOCK_D, LEVELS, LOG2P)  # fmt: skip
    store_base_rows(dv_ptr, acc, b, h, n, live, d, dmask, N, H, D)
    for j in tl.static_range(GROUP):
        acc = _unpool_rows(dqs_ptr, b.to(tl.int64) * sq_b + (h * GROUP + j) * sq_h, sq_s, inv_row, n, live, d,
                           dmask, N, BLOCK_N, BLOCK_D, LEVELS, LOG2P)  # fmt: skip
        store_base_rows(dq_ptr, acc, b, h * GROUP + j, n, live, d, dmask, N, H * GROUP, D)


def gather_fwd_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv: torch.Tensor,
    levels: int,
    pooling_factor: int,
    s_sel: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q [B, N, H, D]``, ``k, v [B, N, H_s, D]`` (k and v of one stride, last dims contiguous; ``H_s`` the
    selection heads, dividing H) -> ``[B, S_sel, H, D]``, 2 x ``[B, S_sel, H_s, D]``, contiguous."""
    batch, seq_len, heads, dim = k.shape
    group = q.shape[2] // heads
    assert k.stride() == v.stride() and q.stride(-1) == 1 and k.stride(-1) == 1
    n_tot = total_entries(seq_len, levels, pooling_factor)
    # Every slot is written: the emitted entries are exactly the slots (select.py).
    outs = [torch.empty(batch, s_sel, x.shape[2], dim, device=q.device, dtype=q.dtype) for x in (q, k, v)]
    sub, block_d, pool_rows = pool_blocking(q, dim, levels, pooling_factor)
    _gather_fwd_kernel[(seq_len // sub, batch * heads, triton.cdiv(dim, block_d))](
        q, k, v, *outs, inv,
        seq_len, n_tot, s_sel, heads,
        k.stride(0), k.stride(1), k.stride(2),
        q.stride(0), q.stride(1), q.stride(2),
        D=dim, BLOCK_D=block_d, SUB=sub, POOL_ROWS=pool_rows,
        **level_constexprs(levels, pooling_factor), GROUP=group, num_warps=4,
    )  # fmt: skip
    return outs[0], outs[1], outs[2]


def gather_bwd_launch(
    d_sel: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    inv: torch.Tensor,
    seq_len: int,
    levels: int,
    pooling_factor: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``[B, S_sel, H, D]`` (q) and ``[B, S_sel, H_s, D]`` (k, v) (any strides, last dim contiguous)
    -> dq ``[B, N, H, D]``, dk, dv ``[B, N, H_s, D]``."""
    batch, _, heads, dim = d_sel[1].shape
    group = d_sel[0].shape[2] // heads
    assert all(g.stride(-1) == 1 for g in d_sel)
    n_tot = total_entries(seq_len, levels, pooling_factor)
    outs = [torch.empty(batch, seq_len, g.shape[2], dim, device=inv.device, dtype=g.dtype) for g in d_sel]
    strides = [s for g in d_sel for s in (g.stride(0), g.stride(1), g.stride(2))]
    block_n = rows_per_program(inv, 32 if dim <= 64 else 16)
    # The paper's selection keeps its one-pass kernel (q, k, v accumulated together); groups use their own.
    kernel, extra = (_gather_bwd_kernel, {}) if group == 1 else (_gather_bwd_group_kernel, {"GROUP": group})
    kernel[(triton.cdiv(seq_len, block_n), batch * heads)](
        *d_sel, *outs, inv,
        seq_len, n_tot, heads, *strides,
        D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_N=block_n,
        **level_constexprs(levels, pooling_factor), **extra, num_warps=4,
    )  # fmt: skip
    return outs[0], outs[1], outs[2]
