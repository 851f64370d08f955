"""Triton kernels for the strictly causal selection (README §8b) on given score pyramids.

§3's rule decides a tile alone; §8b's does not: a candidate's rolling cutoff reaches into the previous tile's
stream of candidates at the same level, and ``B``'s stream is the previous tile's candidates outside its ``A``.
So no program can make a tile's whole selection by itself. Instead, one launch per level (coarsest first), one
program per (batch*head, tile):

``_causal_level_kernel``  reads the candidates of its tile and of the two tiles before it (all written by the
                          previous launch), walks ``A`` for the previous tile and for its own (the previous
                          tile's ``A`` says which of its candidates are in ``B``'s stream), then ``B`` for its own,
                          and writes its order words for this level and its next level's candidates (children of
                          the 128 refined, ascending).
``_causal_place_kernel``  places every emitted entry in its compacted slot, as ``_select_kernel`` does.

The cutoffs are counted, as in the reference: a lagged score reaches the r-th largest of its window exactly when
fewer than r window members exceed it. Each candidate compares itself with the ``m`` members before it in its
stream, ``CHUNK`` at a time, so the work per program is ``m^2`` comparisons per walk (three walks per level).

Outputs: ``codes``, ``inv`` as select.py's, equal to ``naive.select_from_scores(..., causal=True)`` entry by
entry when both get the same scores (squared norms here rank like the reference's norms).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import level_constexprs, level_offset, order_word, place_tile, warps_for
from .geometry import PICKED_PER_SCORE, REFINED_PER_TILE, LighthouseGeometry


@triton.jit
def _lagged(scores_ptr, index, live):
    """README §8b's lagged score of the entries ``index`` of one level (``scores_ptr``: that level's row): the
    score of the entry before each; -inf for entry 0 and for lanes that are not live (pads exceed nothing)."""
    return tl.load(scores_ptr + index - 1, mask=live & (index >= 1), other=float("-inf"))


@triton.jit
def _walk(prev_ptr, own_ptr, length, stream_start, M_BLOCK: tl.constexpr, CHUNK: tl.constexpr, PICK: tl.constexpr):
    """One tile's walk (README §8b steps 2-3) over a stream whose tiles each hold ``length`` members: the lagged
    scores of this tile's members are at ``own_ptr``, the previous tile's at ``prev_ptr`` (-inf where there is no
    previous tile), both in position order. Returns the picked mask over lanes ``[0, M_BLOCK)``.

    Member j's window is the previous tile's members j.. and this tile's members ..j-1: the ``length`` members
    just before it. ``stream_start``: the stream position of this tile's first member (fewer than ``length``
    members before a member only in the first tile)."""
    lane = tl.arange(0, M_BLOCK)
    live = lane < length
    score = tl.load(own_ptr + lane, mask=live, other=float("-inf"))
    above = tl.zeros([M_BLOCK], dtype=tl.int32)
    for start in range(0, M_BLOCK, CHUNK):
        member = start + tl.arange(0, CHUNK)
        present = member < length
        earlier_tile = tl.load(prev_ptr + member, mask=present, other=float("-inf"))
        this_tile = tl.load(own_ptr + member, mask=present, other=float("-inf"))
        in_window_before = member[None, :] >= lane[:, None]  # previous tile: members j.. of it
        in_window_here = member[None, :] < lane[:, None]  # this tile: members before j
        above += tl.sum(((earlier_tile[None, :] > score[:, None]) & in_window_before).to(tl.int32), axis=1)
        above += tl.sum(((this_tile[None, :] > score[:, None]) & in_window_here).to(tl.int32), axis=1)
    before = tl.minimum(stream_start + lane, length)
    rank = (PICK * before + length - 1) // length  # ceil: PICK for a full window, 0 with nothing before
    eligible = live & (above < rank)
    seen = tl.cumsum(eligible.to(tl.int32), axis=0)
    picked_before = tl.minimum(seen - eligible.to(tl.int32), PICK)
    fill = (length - lane) <= (PICK - picked_before)  # the members left are no more than the places left
    return live & ((eligible & (seen <= PICK)) | fill)


@triton.jit
def _compact(values, keep, dst_ptr):
    """Store ``values`` where ``keep``, packed to the front of ``dst_ptr`` in lane order."""
    tl.store(dst_ptr + tl.cumsum(keep.to(tl.int32), axis=0) - 1, values, mask=keep)


@triton.jit
def _causal_level_kernel(
    sq_ptr, sk_ptr, cand_in_ptr, cand_out_ptr, words_ptr, scores_scratch_ptr, int_scratch_ptr,
    N, N_TOT, NUM_TILES, M, WORDS_AT, S_BLOCK, NEXT_WORDS_AT,
    LEVEL: tl.constexpr, M_BLOCK: tl.constexpr, CHUNK: tl.constexpr,
    LEVELS: tl.constexpr, LOG2P: tl.constexpr, REF: tl.constexpr, PICK: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    pid_bh = tl.program_id(1)
    P: tl.constexpr = 1 << LOG2P
    lane = tl.arange(0, M_BLOCK)
    live = lane < M
    level_row = pid_bh.to(tl.int64) * N_TOT + level_offset(N, LEVEL, LOG2P)
    cand_row = cand_in_ptr + (pid_bh.to(tl.int64) * NUM_TILES) * M_BLOCK
    # This program's scratch, M_BLOCK each: lagged query scores of tiles t-2, t-1, t and lagged key scores of the
    # non-A members of tiles t-1 and t (B's streams), fp32; B's picks and the refined parents, int32.
    program = pid_bh.to(tl.int64) * NUM_TILES + tile
    mine = scores_scratch_ptr + program * (5 * M_BLOCK)
    q2, q1, q0, k1, k0 = mine, mine + M_BLOCK, mine + 2 * M_BLOCK, mine + 3 * M_BLOCK, mine + 4 * M_BLOCK
    picks_b = int_scratch_ptr + program * (2 * M_BLOCK)
    parents = picks_b + M_BLOCK

    # Lane masks, not scalar conditions: the interpreter takes only tensors as masks.
    live_prev = live & ((lane * 0 + tile) >= 1)
    live_prev2 = live & ((lane * 0 + tile) >= 2)
    own = tl.load(cand_row + tile * M_BLOCK + lane, mask=live, other=0)
    prev = tl.load(cand_row + (tile - 1) * M_BLOCK + lane, mask=live_prev, other=0)
    prev2 = tl.load(cand_row + (tile - 2) * M_BLOCK + lane, mask=live_prev2, other=0)
    tl.store(q0 + lane, _lagged(sq_ptr + level_row, own, live))
    tl.store(q1 + lane, _lagged(sq_ptr + level_row, prev, live_prev))
    tl.store(q2 + lane, _lagged(sq_ptr + level_row, prev2, live_prev2))
    tl.debug_barrier()

    # A of the previous tile (its non-A members are B's stream before this tile), then this tile's A.
    a_prev = _walk(q2, q1, M, (tile - 1) * M, M_BLOCK, CHUNK, PICK) & live_prev
    a_own = _walk(q1, q0, M, tile * M, M_BLOCK, CHUNK, PICK)
    rest_prev = live_prev & (~a_prev)
    rest_own = live & (~a_own)
    # Unused stream places stay -inf (pads exceed nothing): the first tile has no previous stream.
    tl.store(k1 + lane, tl.full([M_BLOCK], float("-inf"), tl.float32))
    tl.debug_barrier()
    _compact(_lagged(sk_ptr + level_row, prev, rest_prev), rest_prev, k1)
    _compact(_lagged(sk_ptr + level_row, own, rest_own), rest_own, k0)
    tl.debug_barrier()
    b_compact = _walk(k1, k0, M - PICK, tile * (M - PICK), M_BLOCK, CHUNK, PICK)
    tl.store(picks_b + lane, b_compact.to(tl.int32))
    tl.debug_barrier()
    b_own = tl.load(picks_b + tl.cumsum(rest_own.to(tl.int32), axis=0) - 1, mask=rest_own, other=0) != 0
    refined = a_own | (rest_own & b_own)

    tile_words = words_ptr + (pid_bh.to(tl.int64) * NUM_TILES + tile) * S_BLOCK
    tl.store(tile_words + WORDS_AT + lane, order_word(own.to(tl.int64), refined, LEVEL, LEVELS, LOG2P), mask=live)

    # The next level's candidates: the children of the refined entries, ascending.
    _compact(own, refined, parents)
    tl.debug_barrier()
    CHILDREN: tl.constexpr = REF * P
    children = tl.reshape(tl.load(parents + tl.arange(0, REF))[:, None] * P + tl.arange(0, P)[None, :], [CHILDREN])
    out_row = cand_out_ptr + (pid_bh.to(tl.int64) * NUM_TILES + tile) * M_BLOCK
    tl.store(out_row + tl.arange(0, CHILDREN), children)
    if LEVEL == 2:  # the base level: every candidate is a leaf
        leaf = tl.arange(0, CHILDREN) < 0
        tl.store(
            tile_words + NEXT_WORDS_AT + tl.arange(0, CHILDREN),
            order_word(children.to(tl.int64), leaf, 1, LEVELS, LOG2P),
        )


@triton.jit
def _causal_place_kernel(
    codes_ptr, inv_ptr, words_ptr,
    N, N_TOT, S_SEL, NC, S_TILE, NUM_TILES, S_BLOCK,
    NC_BLOCK: tl.constexpr, NC_STEPS: tl.constexpr, LEVELS: tl.constexpr, LOG2P: tl.constexpr, REF: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    pid_bh = tl.program_id(1)
    CHILDREN: tl.constexpr = REF * (1 << LOG2P)
    tile_words = words_ptr + (pid_bh.to(tl.int64) * NUM_TILES + tile) * S_BLOCK
    codes_row = codes_ptr + pid_bh.to(tl.int64) * S_SEL
    inv_row = inv_ptr + pid_bh.to(tl.int64) * N_TOT
    place_tile(tile_words, tile, codes_row, inv_row, N, NC, S_TILE, NC_BLOCK, NC_STEPS, LEVELS, LOG2P, CHILDREN)


def select_causal_launch(
    scores_q: torch.Tensor, scores_k: torch.Tensor, geometry: LighthouseGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """README §8b's selection on score pyramids ``[B, H_s, N_tot]`` fp32 (contiguous, levels end to end, base
    first; not lagged: the kernels lag them) -> ``codes [B, H_s, S_sel]``, ``inv [B, H_s, N_tot]`` int32."""
    batch, heads, n_tot = scores_q.shape
    levels, p, tiles = geometry.levels, geometry.pooling_factor, geometry.num_tiles
    nc, children = geometry.coarse_per_tile, REFINED_PER_TILE * p
    m_block = triton.next_power_of_2(max(nc, children))
    s_block = triton.next_power_of_2(geometry.selected_per_tile)
    device = scores_q.device
    # The interpreter (CPU, tests) pays per operation, the GPU per register: whole rows at once there.
    chunk = m_block if not scores_q.is_cuda else max(8, min(64, 16384 // m_block))
    cand = torch.zeros(2, batch * heads, tiles, m_block, device=device, dtype=torch.int32)
    cand[0, :, :, :nc] = torch.arange(geometry.coarse_len, device=device, dtype=torch.int32).view(tiles, nc)
    words = torch.empty(batch * heads * tiles * s_block, device=device, dtype=torch.int64)
    scores_scratch = torch.empty(batch * heads * tiles * 5 * m_block, device=device, dtype=torch.float32)
    int_scratch = torch.empty(batch * heads * tiles * 2 * m_block, device=device, dtype=torch.int32)
    warps = warps_for(m_block, 128)
    constexprs = dict(**level_constexprs(levels, p), REF=REFINED_PER_TILE)
    words_at = 0  # coarsest level first, then children * (levels - level - 1) ... as select.py lays them out
    for step, level in enumerate(range(levels, 1, -1)):
        m = nc if level == levels else children
        next_at = nc + step * children
        _causal_level_kernel[(tiles, batch * heads)](
            scores_q, scores_k, cand[step % 2], cand[(step + 1) % 2], words, scores_scratch, int_scratch,
            geometry.seq_len, n_tot, tiles, m, words_at, s_block, next_at,
            LEVEL=level, M_BLOCK=m_block, CHUNK=chunk, PICK=PICKED_PER_SCORE, **constexprs, num_warps=warps,
        )  # fmt: skip
        words_at = next_at
    codes = torch.empty(batch, heads, geometry.selected_len, device=device, dtype=torch.int32)
    inv = torch.full((batch, heads, n_tot), -1, device=device, dtype=torch.int32)
    _causal_place_kernel[(tiles, batch * heads)](
        codes, inv, words,
        geometry.seq_len, n_tot, geometry.selected_len, nc, geometry.selected_per_tile, tiles, s_block,
        NC_BLOCK=triton.next_power_of_2(nc), NC_STEPS=nc.bit_length(), **constexprs, num_warps=warps,
    )  # fmt: skip
    return codes, inv
