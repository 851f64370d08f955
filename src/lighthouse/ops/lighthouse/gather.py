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
    D: tl.constexpr, BLOCK_D: tl.constexpr, SUB: tl.constexpr, POOL_ROWS: tl.constexpr, LEVELS: tl.constexpr,
    LOG2P: tl.constexpr,
):  # fmt: skip
    b, h, m0, d, dmask = pooling_block(H, SUB, BLOCK_D, D)
    rows = m0 + tl.arange(0, SUB)
    src = b.to(tl.int64) * stride_b + h * stride_h + rows.to(tl.int64)[:, None] * stride_n + d[None, :]
    # All three loads first, so they are in flight together.
    xq = tl.load(q_ptr + src, mask=dmask[None, :], other=0.0)
    xk = tl.load(k_ptr + src, mask=dmask[None, :], other=0.0)
    xv = tl.load(v_ptr + src, mask=dmask[None, :], other=0.0)
    inv_row = inverse_map_row(inv_ptr, b, h, H, N_TOT)
    dst = compacted_head(b, h, S_SEL, H, D)  # outputs [B, S_sel, H, D], contiguous
    pool_to_slots(xq, m0, qs_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)
    pool_to_slots(xk, m0, ks_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)
    pool_to_slots(xv, m0, vs_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)


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


def gather_fwd_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    inv: torch.Tensor,
    levels: int,
    pooling_factor: int,
    s_sel: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q, k, v [B, N, H, D]`` (same strides, last dim contiguous) -> 3 x ``[B, S_sel, H, D]`` contiguous."""
    batch, seq_len, heads, dim = q.shape
    assert q.stride() == k.stride() == v.stride() and q.stride(-1) == 1
    n_tot = total_entries(seq_len, levels, pooling_factor)
    # Every slot is written: the emitted entries are exactly the slots (select.py).
    outs = [torch.empty(batch, s_sel, heads, dim, device=q.device, dtype=q.dtype) for _ in range(3)]
    sub, block_d, pool_rows = pool_blocking(q, dim, levels, pooling_factor)
    _gather_fwd_kernel[(seq_len // sub, batch * heads, triton.cdiv(dim, block_d))](
        q, k, v, *outs, inv,
        seq_len, n_tot, s_sel, heads,
        q.stride(0), q.stride(1), q.stride(2),
        D=dim, BLOCK_D=block_d, SUB=sub, POOL_ROWS=pool_rows,
        **level_constexprs(levels, pooling_factor), num_warps=4,
    )  # fmt: skip
    return outs[0], outs[1], outs[2]


def gather_bwd_launch(
    d_sel: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    inv: torch.Tensor,
    seq_len: int,
    levels: int,
    pooling_factor: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``[B, S_sel, H, D]`` (any strides, last dim contiguous) -> dq, dk, dv ``[B, N, H, D]``."""
    batch, _, heads, dim = d_sel[0].shape
    assert all(g.stride(-1) == 1 for g in d_sel)
    n_tot = total_entries(seq_len, levels, pooling_factor)
    outs = [torch.empty(batch, seq_len, heads, dim, device=inv.device, dtype=g.dtype) for g in d_sel]
    strides = [s for g in d_sel for s in (g.stride(0), g.stride(1), g.stride(2))]
    block_n = rows_per_program(inv, 32 if dim <= 64 else 16)
    _gather_bwd_kernel[(triton.cdiv(seq_len, block_n), batch * heads)](
        *d_sel, *outs, inv,
        seq_len, n_tot, heads, *strides,
        D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_N=block_n,
        **level_constexprs(levels, pooling_factor), num_warps=4,
    )  # fmt: skip
    return outs[0], outs[1], outs[2]
