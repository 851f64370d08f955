"""Triton kernels for the causal scatter back to base positions (README §6) and its backward.

Entry (level l, index i), span ``c_l = p^(l-1)``, adds its output row to base positions
``[(i+1) c_l - 1, (i+2) c_l - 1)`` (clipped to N). Read the other way round, position ``n`` receives from
level ``l`` exactly the entry ``(n + 1) // c_l - 1``, if that entry was emitted.

``_scatter_fwd_kernel``  one program per (block of base rows, batch*head): sums at most L rows in fp32 and
                         writes each output element once (0 where nothing arrives). No atomics.
``_scatter_bwd_kernel``  one program per (block of base rows, batch*head, chunk of D): the gradient of an
                         entry is the sum of the output gradient over its target positions, pooled from the
                         rows in order like the forward gather (common.pool_to_slots).
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
def _scatter_fwd_kernel(
    o_ptr, out_ptr, inv_ptr,
    N, N_TOT, H,
    so_b, so_h, so_s,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    LEVELS: tl.constexpr, LOG2P: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    # H: query heads; GROUP of them share one selection (per_kv_group), so head h reads inverse map h // GROUP.
    b, h, n, live, d, dmask = base_row_block(N, H, BLOCK_N, BLOCK_D, D)
    inv_row = inverse_map_row(inv_ptr, b, h // GROUP, H // GROUP, N_TOT)
    base = b.to(tl.int64) * so_b + h * so_h
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    off = N * 0
    n_level = N
    for lv in tl.static_range(LEVELS):
        entry = ((n + 1) >> (LOG2P * lv)) - 1
        ok = live & (entry >= 0)
        slot = tl.load(inv_row + off + entry, mask=ok, other=-1).to(tl.int64)
        mask = (slot >= 0)[:, None] & dmask[None, :]
        acc += tl.load(o_ptr + base + slot[:, None] * so_s + d[None, :], mask=mask, other=0.0).to(tl.float32)
        off += n_level
        n_level = n_level // (1 << LOG2P)
    store_base_rows(out_ptr, acc, b, h, n, live, d, dmask, N, H, D)


@triton.jit
def _scatter_bwd_kernel(
    g_ptr, dsel_ptr, inv_ptr,
    N, N_TOT, S_SEL, H,
    sg_b, sg_n, sg_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, SUB: tl.constexpr, POOL_ROWS: tl.constexpr, LEVELS: tl.constexpr,
    LOG2P: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    # Entry (l, i) receives the sum of grad over rows [(i+1) c_l - 1, (i+2) c_l - 1): the aligned span of
    # entry i + 1 shifted back by one row. So pool grad[m - 1] over aligned spans and hand span e to entry
    # e - 1. Rows m run over [0, N + c_L): one block more than N / SUB.
    b, h, m0, d, dmask = pooling_block(H, SUB, BLOCK_D, D)
    rows = m0 + tl.arange(0, SUB) - 1
    live = (rows >= 0) & (rows < N)
    src = b.to(tl.int64) * sg_b + h * sg_h + rows.to(tl.int64)[:, None] * sg_n + d[None, :]
    x = tl.load(g_ptr + src, mask=live[:, None] & dmask[None, :], other=0.0)
    dst = dsel_ptr + compacted_head(b, h, S_SEL, H, D)  # output [B, S_sel, H, D], contiguous
    inv_row = inverse_map_row(inv_ptr, b, h // GROUP, H // GROUP, N_TOT)  # as in the forward
    pool_to_slots(x, m0, dst, inv_row, N, H * D, d, dmask, SUB, POOL_ROWS, LEVELS, LOG2P, 1, False)


def scatter_fwd_launch(
    o_sel: torch.Tensor, inv: torch.Tensor, seq_len: int, levels: int, pooling_factor: int
) -> torch.Tensor:
    """``o_sel [B, H, S_sel, D]`` (any strides, last dim contiguous) -> ``out [B, N, H, D]`` contiguous; ``inv``
    ``[B, H_s, N_tot]`` with ``H_s`` dividing H (per_kv_group: query head h uses selection h // (H / H_s))."""
    batch, heads, _, dim = o_sel.shape
    assert o_sel.stride(-1) == 1
    n_tot = total_entries(seq_len, levels, pooling_factor)
    out = torch.empty(batch, seq_len, heads, dim, device=o_sel.device, dtype=o_sel.dtype)
    block_n = rows_per_program(o_sel, 64 if dim <= 64 else 32)
    _scatter_fwd_kernel[(triton.cdiv(seq_len, block_n), batch * heads)](
        o_sel, out, inv,
        seq_len, n_tot, heads,
        o_sel.stride(0), o_sel.stride(1), o_sel.stride(2),
        D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_N=block_n,
        **level_constexprs(levels, pooling_factor), GROUP=heads // inv.shape[1], num_warps=4,
    )  # fmt: skip
    return out


def scatter_bwd_launch(
    grad: torch.Tensor, inv: torch.Tensor, levels: int, pooling_factor: int, s_sel: int
) -> torch.Tensor:
    """``grad [B, N, H, D]`` (any strides, last dim contiguous) -> ``d_o_sel [B, S_sel, H, D]`` contiguous."""
    batch, seq_len, heads, dim = grad.shape
    assert grad.stride(-1) == 1
    n_tot = total_entries(seq_len, levels, pooling_factor)
    d_sel = torch.empty(batch, s_sel, heads, dim, device=grad.device, dtype=grad.dtype)
    sub, block_d, pool_rows = pool_blocking(grad, dim, levels, pooling_factor)
    _scatter_bwd_kernel[(seq_len // sub + 1, batch * heads, triton.cdiv(dim, block_d))](
        grad, d_sel, inv,
        seq_len, n_tot, s_sel, heads,
        grad.stride(0), grad.stride(1), grad.stride(2),
        D=dim, BLOCK_D=block_d, SUB=sub, POOL_ROWS=pool_rows,
        **level_constexprs(levels, pooling_factor), GROUP=heads // inv.shape[1], num_warps=4,
    )  # fmt: skip
    return d_sel
