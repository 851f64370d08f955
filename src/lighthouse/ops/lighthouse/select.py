"""Triton kernels for the scores (README §2) and the tiled hierarchical top-k selection (README §3, §4).

Two launches per layer:

``_scores_kernel``  reads q and k once and writes the fp32 score pyramid of every level (squared norms,
                    which rank like the norms), ``[B, H, N_tot]`` with the levels laid end to end, base
                    first (``N_tot = N + N/p + ... + N/p^(L-1)``). With ``per_kv_group`` ``H`` is k's heads
                    and a query score the max over the group's query heads. (The dilated scorer computes
                    its base scores with SDPA instead, dilated.py, and skips this kernel.)
``_select_kernel``  one program per (batch*head, tile): top-k by query then by key score at each level,
                    refining 128 entries per level, then places the tile's emitted entries, ordered by
                    the README §4 key, in the tile's run of compacted slots.

Every tile emits exactly ``selected_per_tile`` entries and tiles are contiguous in position, so tile ``t``
owns compacted slots ``[t * S_tile, (t + 1) * S_tile)`` and no program needs another's result.

Outputs: ``codes [B, H, S_sel]`` and ``inv [B, H, N_tot]``, both int32, in the formats of common.py.
No atomics: each output element is written by exactly one program, so results are bitwise reproducible.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    CODE_INDEX_BITS,
    level_constexprs,
    level_offset,
    order_word,
    place_tile,
    rows_per_program,
    span_block,
    warps_for,
)
from .geometry import PICKED_PER_SCORE, REFINED_PER_TILE, LighthouseGeometry

# ---------------------------------------------------------------- scores


@triton.jit
def _scores_kernel(
    q_ptr, k_ptr, sq_ptr, sk_ptr,
    N, N_TOT, H,
    stride_qb, stride_qn, stride_qh,
    stride_kb, stride_kn, stride_kh,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr,
    LEVELS: tl.constexpr, LOG2P: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    # H: selection heads (k's heads). GROUP query heads share each of them (1 for the paper's selection;
    # per_kv_group: a query score is the max over the group, README §3b).
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    n0 = pid_n * BLOCK_N
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    row_q = q_ptr + b.to(tl.int64) * stride_qb + (h * GROUP) * stride_qh
    row_k = k_ptr + b.to(tl.int64) * stride_kb + h * stride_kh
    out_q = sq_ptr + pid_bh.to(tl.int64) * N_TOT
    out_k = sk_ptr + pid_bh.to(tl.int64) * N_TOT

    # Base level: the SQUARED L2 norm of each row, in fp32. It ranks exactly like the norm (x -> x^2 is
    # increasing on norms >= 0) without depending on how a sqrt rounds: torch's CPU sqrt is not always
    # correctly rounded, so a kernel sqrt could differ from the reference's in the last bit and flip a tie.
    for r0 in range(0, BLOCK_N, SUB_N):
        n = n0 + r0 + tl.arange(0, SUB_N)
        offs_q = n.to(tl.int64)[:, None] * stride_qn + d[None, :]
        offs_k = n.to(tl.int64)[:, None] * stride_kn + d[None, :]
        xq = tl.load(row_q + offs_q, mask=dmask[None, :], other=0.0).to(tl.float32)
        xk = tl.load(row_k + offs_k, mask=dmask[None, :], other=0.0).to(tl.float32)
        score_q = tl.sum(xq * xq, axis=1)
        # The max of squared norms is the square of the max of norms: it ranks like the reference's group max.
        for j in tl.static_range(1, GROUP):
            xq = tl.load(row_q + j * stride_qh + offs_q, mask=dmask[None, :], other=0.0).to(tl.float32)
            score_q = tl.maximum(score_q, tl.sum(xq * xq, axis=1))
        tl.store(out_q + n, score_q)
        tl.store(out_k + n, tl.sum(xk * xk, axis=1))

    if LEVELS > 1:
        # Coarser levels: max over the span. BLOCK_N is a multiple of the coarsest span, so every
        # coarse entry of this block is complete here; re-read the base scores this program just wrote.
        tl.debug_barrier()
        sq = tl.load(out_q + n0 + tl.arange(0, BLOCK_N), volatile=True)
        sk = tl.load(out_k + n0 + tl.arange(0, BLOCK_N), volatile=True)
        off = N * 0
        n_level = N
        for lv in tl.static_range(1, LEVELS):
            off += n_level
            n_level = n_level // (1 << LOG2P)
            # (Constexpr expressions are written out inline: inside a static loop a constexpr name
            # cannot be re-bound and a plain name would turn it into a tensor.)
            sq = tl.max(tl.reshape(sq, [BLOCK_N >> (LOG2P * lv), 1 << LOG2P]), axis=1)
            sk = tl.max(tl.reshape(sk, [BLOCK_N >> (LOG2P * lv), 1 << LOG2P]), axis=1)
            dst = off + (n0 >> (LOG2P * lv)) + tl.arange(0, BLOCK_N >> (LOG2P * lv))
            tl.store(out_q + dst, sq)
            tl.store(out_k + dst, sk)


# ---------------------------------------------------------------- selection
#
# No sorting networks: top-64 membership comes from a radix select of the 64th largest key (63 rounds of
# compare-and-count over the candidates, in registers), the refined entries are compacted in index order
# with a prefix sum, and the compacted order comes from binary searches into the per-level lists of
# emitted entries, which are each ascending in position. Small code (fast to compile; bitonic networks
# over 2048-4096 keys took 30-70 s per configuration) and little work per program.


@triton.jit
def _kth_largest(keys, K: tl.constexpr):
    """The ``K``-th largest of distinct int64 ``keys`` (values < 0 never count; at least K are >= 0): the
    largest ``t`` with ``#{key >= t} >= K``, built one bit at a time from the top."""
    threshold = tl.max(keys, axis=0) * 0
    one = threshold + 1
    for bit in range(62, -1, -1):  # a runtime loop: unrolled, 4 of these took a minute to compile
        trial = threshold | (one << bit)
        hits = tl.sum((keys >= trial).to(tl.int32), axis=0)
        threshold = tl.where(hits >= K, trial, threshold)
    return threshold


@triton.jit
def _refine(sq, sk, index, valid, parents_ptr, PICK: tl.constexpr):
    """README §3 steps 1-4 on one candidate set, lanes in ascending entry index: returns the refined mask and
    writes the refined entry indices, ascending, to ``parents_ptr[0 : 2 * PICK]``.

    Ranking key = fp32 score bits (scores are >= 0, so their bit patterns order like the values) in the
    high word and ``2^31 - 1 - index`` in the low word: larger score first, equal scores -> lower index
    first, and all keys distinct, so ``key >= K-th largest`` is exactly top-K membership.
    """
    low = (0x7FFFFFFF - index).to(tl.int64)
    key_q = tl.where(valid, (sq.to(tl.int32, bitcast=True).to(tl.int64) << 32) | low, -1)
    by_query = key_q >= _kth_largest(key_q, PICK)
    key_k = tl.where(valid & (~by_query), (sk.to(tl.int32, bitcast=True).to(tl.int64) << 32) | low, -1)
    by_key = key_k >= _kth_largest(key_k, PICK)
    refined = by_query | by_key
    position = tl.cumsum(refined.to(tl.int32), axis=0) - 1
    tl.store(parents_ptr + position, index, mask=refined)
    return refined


@triton.jit
def _select_kernel(
    sq_ptr, sk_ptr, codes_ptr, inv_ptr, scratch_ptr,
    N, N_TOT, S_SEL, NC, S_TILE, NUM_TILES,
    NC_BLOCK: tl.constexpr, NC_STEPS: tl.constexpr, S_BLOCK: tl.constexpr, LEVELS: tl.constexpr,
    LOG2P: tl.constexpr, REF: tl.constexpr, PICK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    pid_bh = tl.program_id(1)
    P: tl.constexpr = 1 << LOG2P
    CHILDREN: tl.constexpr = REF * P
    row = pid_bh.to(tl.int64) * N_TOT
    # This program's scratch: per-level lists of emitted order words (coarsest NC, then CHILDREN per
    # finer level, each ascending) | the current refined indices.
    words_ptr = scratch_ptr + (pid_bh.to(tl.int64) * NUM_TILES + tile) * (S_BLOCK + REF)
    parents_ptr = words_ptr + S_BLOCK

    # Coarsest level: the tile's NC entries are the candidates (NC_BLOCK >= NC, padded lanes invalid).
    lane = tl.arange(0, NC_BLOCK)
    valid = lane < NC
    index = tile * NC + lane
    off = level_offset(N, LEVELS, LOG2P)
    sq = tl.load(sq_ptr + row + off + index, mask=valid, other=0.0)
    sk = tl.load(sk_ptr + row + off + index, mask=valid, other=0.0)
    refined = _refine(sq, sk, index, valid, parents_ptr, PICK)
    tl.store(words_ptr + lane, order_word(index, refined, LEVELS, LEVELS, LOG2P), mask=valid)

    # Finer levels: the children of the 128 refined entries (ascending) are the next candidates.
    child = tl.arange(0, CHILDREN)
    for step in tl.static_range(1, LEVELS):
        tl.debug_barrier()  # the refined indices are in scratch, written by all threads
        parents = tl.load(parents_ptr + tl.arange(0, REF))
        index = tl.reshape(parents[:, None] * P + tl.arange(0, P)[None, :], [CHILDREN])
        # level LEVELS - step, written out inline (see _scores_kernel)
        if LEVELS - step > 1:
            off = level_offset(N, LEVELS - step, LOG2P)
            sq = tl.load(sq_ptr + row + off + index)
            sk = tl.load(sk_ptr + row + off + index)
            tl.debug_barrier()  # every thread has read the parents before _refine overwrites them
            refined = _refine(sq, sk, index, child >= 0, parents_ptr, PICK)
        else:
            refined = child < 0
        emitted = order_word(index, refined, LEVELS - step, LEVELS, LOG2P)
        tl.store(words_ptr + NC + (step - 1) * CHILDREN + child, emitted)

    # Compacted order: slot = tile start + number of the tile's emitted entries with a smaller key.
    tl.debug_barrier()
    codes_row = codes_ptr + pid_bh.to(tl.int64) * S_SEL
    place_tile(words_ptr, tile, codes_row, inv_ptr + row, N, NC, S_TILE, NC_BLOCK, NC_STEPS, LEVELS, LOG2P, CHILDREN)


# ---------------------------------------------------------------- launcher


def select_launch(q: torch.Tensor, k: torch.Tensor, geometry: LighthouseGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores + selection for ``q`` ``[B, N, H, D]`` and ``k`` ``[B, N, H_s, D]`` (last dim contiguous), ``H_s``
    dividing ``H``: one selection per head of ``k`` (``H_s = H``: the paper's, per query head).

    Returns ``codes [B, H_s, S_sel]`` int32 and ``inv [B, H_s, N_tot]`` int32 (see the module docstring).
    """
    check_code_range(geometry)
    scores_q, scores_k = scores_launch(q, k, geometry)
    return select_from_scores_launch(scores_q, scores_k, geometry)


def check_code_range(geometry: LighthouseGeometry) -> None:
    """Indices must fit the code's index field, and position keys (times 2^(L-1)) the order word's high half."""
    seq_len, levels = geometry.seq_len, geometry.levels
    if seq_len >= 1 << CODE_INDEX_BITS.value or seq_len << (levels - 1) >= 1 << 31:
        raise ValueError(f"sequence length {seq_len} too long for the 32-bit selection codes")


def scores_launch(q: torch.Tensor, k: torch.Tensor, geometry: LighthouseGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """The squared-norm score pyramids ``[B, H_s, N_tot]`` fp32 of q (max over each group of query heads) and k."""
    batch, seq_len, heads, dim = k.shape
    group = q.shape[2] // heads
    levels, p = geometry.levels, geometry.pooling_factor
    n_tot = geometry.total_entries
    assert q.stride(-1) == 1 and k.stride(-1) == 1

    span = geometry.coarse_span
    if seq_len % (2 * span):
        # An odd count of coarsest entries (N / p^(L-1), e.g. N = 516 at L=2, p=4): no block of >= 2 whole
        # entries divides N, and the kernel's grid left the last entry's scores unwritten (the selection then
        # read uninitialised memory). Such lengths are valid but rare: PyTorch computes their pyramids.
        return torch_score_pyramids(q, k, geometry)
    scores_q = torch.empty(batch, heads, n_tot, device=q.device, dtype=torch.float32)
    scores_k = torch.empty(batch, heads, n_tot, device=q.device, dtype=torch.float32)
    # BLOCK_N holds whole coarsest entries (>= 2 of them, so no level shrinks to one lane) and divides N, which
    # is then a multiple of 2 coarsest spans.
    block_n = span_block(seq_len, 2 * span, rows_per_program(q, 64))
    sub_n = min(block_n, rows_per_program(q, 64 if dim <= 64 else 32))
    _scores_kernel[(seq_len // block_n, batch * heads)](
        q, k, scores_q, scores_k,
        seq_len, n_tot, heads,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_N=block_n, SUB_N=sub_n,
        **level_constexprs(levels, p), GROUP=group, num_warps=4,
    )  # fmt: skip
    return scores_q, scores_k


def torch_score_pyramids(q: torch.Tensor, k: torch.Tensor, geometry: LighthouseGeometry) -> list[torch.Tensor]:
    """What ``_scores_kernel`` computes, in PyTorch: squared row norms in fp32 (a query's the max over its group
    of query heads), max-pooled up the levels, ``[B, H_s, N_tot]`` each."""
    from .naive import group_max, score_pyramids

    base_q = group_max(q.float().square().sum(dim=-1).transpose(1, 2), q.shape[2] // k.shape[2])
    base_k = k.float().square().sum(dim=-1).transpose(1, 2)
    return score_pyramids(base_q, base_k, geometry.levels, geometry.pooling_factor)


def select_from_scores_launch(
    scores_q: torch.Tensor, scores_k: torch.Tensor, geometry: LighthouseGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiled top-k on given score pyramids ``[B, H_s, N_tot]`` fp32 (>= 0, contiguous) -> ``codes``, ``inv``."""
    batch, heads, n_tot = scores_q.shape
    seq_len, p = geometry.seq_len, geometry.pooling_factor
    tiles, s_tile = geometry.num_tiles, geometry.selected_per_tile
    nc_block = triton.next_power_of_2(geometry.coarse_per_tile)
    # One program per (batch*head, tile) is only B*H*T programs, each a chain of small reductions (63 radix
    # rounds per top-64): the fewest warps that hold the candidates keep each reduction inside one warp
    # (shuffles, no shared memory or barriers).
    warps = warps_for(max(nc_block, REFINED_PER_TILE * p), 512)
    s_block = triton.next_power_of_2(s_tile)
    device = scores_q.device
    codes = torch.empty(batch, heads, geometry.selected_len, device=device, dtype=torch.int32)
    inv = torch.full((batch, heads, n_tot), -1, device=device, dtype=torch.int32)
    scratch = torch.empty(batch * heads * tiles * (s_block + REFINED_PER_TILE), device=device, dtype=torch.int64)
    _select_kernel[(tiles, batch * heads)](
        scores_q, scores_k, codes, inv, scratch,
        seq_len, n_tot, geometry.selected_len, geometry.coarse_per_tile, s_tile, tiles,
        NC_BLOCK=nc_block, NC_STEPS=geometry.coarse_per_tile.bit_length(), S_BLOCK=s_block,
        **level_constexprs(geometry.levels, p), REF=REFINED_PER_TILE, PICK=PICKED_PER_SCORE, num_warps=warps,
    )  # fmt: skip
    return codes, inv
