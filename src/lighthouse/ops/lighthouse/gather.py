"""Triton kernels that build the compacted q, k, v from the base tensors (spec §1, §5), and their backward.

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

from .select import level_sizes, rows_per_program, span_block


@triton.jit
def pool_to_slots(
    x, m0, dst_ptr, inv_row, N, SLOT_STRIDE, d, dmask,
    SUB: tl.constexpr, POOL_ROWS: tl.constexpr, LEVELS: tl.constexpr, LOG2P: tl.constexpr,
    SHIFT: tl.constexpr, MEAN: tl.constexpr,
):  # fmt: skip
    """Pool ``x`` ``[SUB, BLOCK_D]`` (input dtype, rows ``m0 .. m0 + SUB``) over the aligned spans of every
    level and write each span's sum (or mean), in fp32 then rounded once, to the slot of entry
    ``m // c_l - SHIFT`` of that level, if that entry was emitted.

    ``dst_ptr`` points at slot 0 of this (batch, head, D chunk); slots are ``SLOT_STRIDE`` elements apart.
    The coarser levels are pooled by one small matmul on the tensor cores, ``W @ x``: row ``r`` of ``W``
    averages the span of one entry (levels stacked, ``POOL_ROWS`` >= 16 rows in all). Products with a
    power of two are exact and the accumulation is fp32, so this equals the fp32 sum / mean. (A reshape
    and sum across rows cost shared-memory round trips and ~100 barriers per program.)
    """
    # Level 1: the rows themselves.
    entry = m0 + tl.arange(0, SUB) - SHIFT
    slot = tl.load(inv_row + entry, mask=(entry >= 0) & (entry < N), other=-1)
    dst = dst_ptr + slot.to(tl.int64)[:, None] * SLOT_STRIDE + d[None, :]
    tl.store(dst, x.to(dst_ptr.dtype.element_ty), mask=(slot >= 0)[:, None] & dmask[None, :])

    # Levels 2..L: which entry (and where its inverse-map row lives) each row of W pools.
    r = tl.arange(0, POOL_ROWS)
    cols = tl.arange(0, SUB)
    pool = tl.zeros([POOL_ROWS, SUB], dtype=tl.float32)
    entry = r * 0 - 1  # -1: row unused
    inv_off = r * 0
    first = N * 0  # first row of W for this level
    off = N * 0
    n_level = N
    for lv in tl.static_range(1, LEVELS):
        off += n_level
        n_level = n_level >> LOG2P
        local = r - first
        mine = (local >= 0) & (local < (SUB >> (LOG2P * lv)))
        weight = (1.0 / (1 << (LOG2P * lv))) if MEAN else 1.0
        pool = tl.where(mine[:, None] & ((cols[None, :] >> (LOG2P * lv)) == local[:, None]), weight, pool)
        level_entry = (m0 >> (LOG2P * lv)) + local - SHIFT
        ok = mine & (level_entry >= 0) & (level_entry < n_level)
        entry = tl.where(ok, level_entry, entry)
        inv_off = tl.where(ok, off, inv_off)
        first += SUB >> (LOG2P * lv)
    if x.dtype == tl.float32:
        pooled = tl.dot(pool, x, input_precision="ieee")
    else:
        pooled = tl.dot(pool.to(x.dtype), x)
    slot = tl.load(inv_row + inv_off + entry, mask=entry >= 0, other=-1)
    dst = dst_ptr + slot.to(tl.int64)[:, None] * SLOT_STRIDE + d[None, :]
    tl.store(dst, pooled.to(dst_ptr.dtype.element_ty), mask=(slot >= 0)[:, None] & dmask[None, :])


@triton.jit
def _gather_fwd_kernel(
    q_ptr, k_ptr, v_ptr, qs_ptr, ks_ptr, vs_ptr, inv_ptr,
    N, N_TOT, S_SEL, H,
    stride_b, stride_n, stride_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, SUB: tl.constexpr, POOL_ROWS: tl.constexpr, LEVELS: tl.constexpr,
    LOG2P: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_n * SUB
    rows = m0 + tl.arange(0, SUB)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    src = b.to(tl.int64) * stride_b + h * stride_h + rows.to(tl.int64)[:, None] * stride_n + d[None, :]
    # All three loads first, so they are in flight together.
    xq = tl.load(q_ptr + src, mask=dmask[None, :], other=0.0)
    xk = tl.load(k_ptr + src, mask=dmask[None, :], other=0.0)
    xv = tl.load(v_ptr + src, mask=dmask[None, :], other=0.0)
    inv_row = inv_ptr + pid_bh.to(tl.int64) * N_TOT
    # Outputs [B, S_sel, H, D] contiguous: the layout SDPA reads as [B, H, S_sel, D] through a transpose.
    dst = (b.to(tl.int64) * S_SEL * H + h) * D
    pool_to_slots(xq, m0, qs_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)
    pool_to_slots(xk, m0, ks_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)
    pool_to_slots(xv, m0, vs_ptr + dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 0, True)


def pool_blocking(x: torch.Tensor, dim: int, levels: int, pooling_factor: int) -> tuple[int, int, int]:
    """(SUB rows, BLOCK_D, POOL_ROWS) for the pooling kernels: SUB holds whole coarsest spans and divides N;
    wide spans take a narrower D chunk so a program's tile stays about 4096 elements (registers, not local
    memory); POOL_ROWS counts the pooled rows of levels 2..L, padded for tl.dot (>= 16, a power of two)."""
    sub = span_block(x.shape[1], pooling_factor ** (levels - 1), rows_per_program(x, 32 if dim > 64 else 64))
    block_d = triton.next_power_of_2(dim)
    if x.is_cuda:
        block_d = min(block_d, max(16, 4096 // sub))
    pooled = sum(sub // pooling_factor**level for level in range(1, levels))
    return sub, block_d, max(16, triton.next_power_of_2(pooled))


@triton.jit
def base_row_block(N, H, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
    """This program's batch, head, block of base rows and D lanes, with their masks, for the kernels that
    walk base rows on a (row blocks, batch*head) grid and write each output row once."""
    pid_bh = tl.program_id(1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    return pid_bh // H, pid_bh % H, n, n < N, d, d < D


@triton.jit
def store_base_rows(ptr, acc, b, h, n, live, d, dmask, N, H, D: tl.constexpr):
    """Write ``acc [BLOCK_N, BLOCK_D]`` to rows ``n`` of head ``h`` of a contiguous ``[B, N, H, D]`` tensor."""
    out = ((b.to(tl.int64) * N + n)[:, None] * H + h) * D + d[None, :]
    tl.store(ptr + out, acc.to(ptr.dtype.element_ty), mask=live[:, None] & dmask[None, :])


@triton.jit
def _gather_bwd_kernel(
    dqs_ptr, dks_ptr, dvs_ptr, dq_ptr, dk_ptr, dv_ptr, inv_ptr,
    N, N_TOT, H,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    LEVELS: tl.constexpr, LOG2P: tl.constexpr,
):  # fmt: skip
    b, h, n, live, d, dmask = base_row_block(N, H, BLOCK_N, BLOCK_D, D)
    inv_row = inv_ptr + (b * H + h).to(tl.int64) * N_TOT
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
    n_tot = sum(level_sizes(seq_len, levels, pooling_factor))
    # Every slot is written: the emitted entries are exactly the slots (select.py).
    outs = [torch.empty(batch, s_sel, heads, dim, device=q.device, dtype=q.dtype) for _ in range(3)]
    sub, block_d, pool_rows = pool_blocking(q, dim, levels, pooling_factor)
    _gather_fwd_kernel[(seq_len // sub, batch * heads, triton.cdiv(dim, block_d))](
        q, k, v, *outs, inv,
        seq_len, n_tot, s_sel, heads,
        q.stride(0), q.stride(1), q.stride(2),
        D=dim, BLOCK_D=block_d, SUB=sub, POOL_ROWS=pool_rows, LEVELS=levels,
        LOG2P=pooling_factor.bit_length() - 1, num_warps=4,
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
    n_tot = sum(level_sizes(seq_len, levels, pooling_factor))
    outs = [torch.empty(batch, seq_len, heads, dim, device=inv.device, dtype=g.dtype) for g in d_sel]
    strides = [s for g in d_sel for s in (g.stride(0), g.stride(1), g.stride(2))]
    block_n = rows_per_program(inv, 32 if dim <= 64 else 16)
    _gather_bwd_kernel[(triton.cdiv(seq_len, block_n), batch * heads)](
        *d_sel, *outs, inv,
        seq_len, n_tot, heads, *strides,
        D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_N=block_n,
        LEVELS=levels, LOG2P=pooling_factor.bit_length() - 1, num_warps=4,
    )  # fmt: skip
    return outs[0], outs[1], outs[2]
