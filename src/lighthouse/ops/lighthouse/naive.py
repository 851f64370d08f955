"""Lighthouse Attention in plain PyTorch: the executable specification of the layer.

Every fast kernel is tested against this file, stage by stage. It favours exactness and clarity over
speed; the math, shapes and invariants are written out once in README.md beside this file.

Layouts: the public entry points (``naive_lighthouse_attention``, ``lighthouse_from_selection``,
``select_entries``) take and return ``[B, N, H, D]``. The stage functions work head-major, ``[B, H, N, D]``,
the layout SDPA wants, so the public entry points transpose once (a view, no copy).

Stages, in order:
    pool_pyramid       -> per level [B, H, N_l, D] means (differentiable)
    entry_scores       -> per level [B, H, N_l] fp32 scores (no grad)
    select_from_scores -> Selection, each field [B, H, S_sel], in compacted order (no grad)
    gather_selected    -> [B, H, S_sel, D] (differentiable)
    compacted_attention-> [B, H, S_sel, D] causal SDPA (differentiable)
    scatter_back       -> [B, H, N, D] summed contributions (differentiable)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import (
    PICKED_PER_SCORE,
    REFINED_PER_TILE,
    LayerOptions,
    LighthouseGeometry,
    Selection,
    check_inputs,
    checked_geometry,
    level_sizes,
)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums and means run in fp32, or in fp64 for fp64 inputs (so gradcheck sees no fp32 rounding)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def level_offsets(sizes: list[int], device: torch.device) -> Tensor:
    """``offsets[l]``: start of level ``l`` in all levels concatenated base first (``offsets[0]`` unused)."""
    starts = [0, 0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return torch.tensor(starts, dtype=torch.long, device=device)


# ---------------------------------------------------------------- pyramid and scores (README §1, §2)


def pool_pyramid(x: Tensor, levels: int, pooling_factor: int) -> list[Tensor]:
    """Mean-pool ``x`` ``[B, H, N, D]`` into ``levels`` levels; level ``l`` is ``[B, H, N / p^(l-1), D]``.

    Level 1 is ``x`` itself. Each coarser entry is the mean over its span of base positions, taken
    directly from the base (not from the level below) and accumulated in fp32 (fp64 for fp64 inputs).
    """
    batch, heads, seq_len, dim = x.shape
    acc = x.to(accumulation_dtype(x.dtype))
    pyramid = [x]
    for level in range(2, levels + 1):
        span = pooling_factor ** (level - 1)
        means = acc.reshape(batch, heads, seq_len // span, span, dim).mean(dim=3)
        pyramid.append(means.to(x.dtype))
    return pyramid


def pool_scores(base: Tensor, levels: int, pooling_factor: int) -> list[Tensor]:
    """Base scores ``[B, H, N]`` -> per level ``[B, H, N_l]``: level ``l`` is the max over each entry's span."""
    batch, heads, seq_len = base.shape
    scores = [base]
    for level in range(2, levels + 1):
        span = pooling_factor ** (level - 1)
        scores.append(base.reshape(batch, heads, seq_len // span, span).amax(dim=-1))
    return scores


def score_pyramids(score_q: Tensor, score_k: Tensor, levels: int, pooling_factor: int) -> list[Tensor]:
    """Base scores ``[B, H_s, N]`` max-pooled up the levels like the norm scores (README §2), laid end to end
    base first: the ``[B, H_s, N_tot]`` fp32 pyramids the selection kernels read."""
    return [torch.cat(pool_scores(s.float(), levels, pooling_factor), dim=2) for s in (score_q, score_k)]


def row_norms(x: Tensor) -> Tensor:
    """L2 norm of each row of ``x [..., D]`` in fp32, whatever the input dtype: ``[...]``."""
    return x.float().square().sum(dim=-1).sqrt()


@torch.no_grad()
def entry_scores(q: Tensor, k: Tensor, levels: int, pooling_factor: int) -> tuple[list[Tensor], list[Tensor]]:
    """Parameter-free scores of every entry of every level, fp32, ``[B, H, N_l]`` per level.

    Base level: the L2 norm of each query / key row, computed in fp32 whatever the input dtype, so the
    ranking is the same for every input precision. Coarser levels: the max of the base scores over the span.
    """
    return pool_scores(row_norms(q), levels, pooling_factor), pool_scores(row_norms(k), levels, pooling_factor)


@torch.no_grad()
def dilated_base_scores(q: Tensor, k: Tensor, v: Tensor, dilation: int) -> tuple[Tensor, Tensor]:
    """The dilated scorer's base scores (README §2b), fp32 ``[B, H, N]`` each, for head-major ``q, k, v
    [B, H, N, D]`` (one K/V head per query head).

    For every offset ``r < dilation`` the positions ``r, r + dilation, ...`` form a subsequence; causal SDPA
    runs on it twice, as ``attn(q, k, v)`` and as ``attn(k, q, v)``, and a position's scores are the L2 norms
    of its two output rows. Written as a loop over the offsets; the fast path (dilated.py) does one SDPA call.
    """
    s_q = q.new_zeros(q.shape[:3], dtype=torch.float32)
    s_k = torch.zeros_like(s_q)
    scale = 1.0 / math.sqrt(q.shape[-1])
    for offset in range(dilation):
        qr, kr, vr = (x[:, :, offset::dilation] for x in (q, k, v))  # [B, H, N / dilation, D]
        s_q[:, :, offset::dilation] = row_norms(F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, scale=scale))
        s_k[:, :, offset::dilation] = row_norms(F.scaled_dot_product_attention(kr, qr, vr, is_causal=True, scale=scale))
    return s_q, s_k


def group_max(scores: Tensor, groups: int) -> Tensor:
    """``[B, H, ...]`` per query head -> ``[B, H / groups, ...]``: the max over each KV head's query heads
    (heads ``g * groups .. (g + 1) * groups - 1`` share KV head ``g``, as SDPA's ``enable_gqa`` pairs them)."""
    if groups == 1:
        return scores
    batch, heads = scores.shape[:2]
    return scores.view(batch, heads // groups, groups, *scores.shape[2:]).amax(dim=2)


def expand_heads(x: Tensor, groups: int) -> Tensor:
    """``[B, H_kv, ...]`` -> ``[B, H_kv * groups, ...]``: each KV head repeated for its query heads (a copy)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


# ---------------------------------------------------------------- selection and ordering (README §3, §4)


def _top_mask(scores: Tensor, count: int) -> Tensor:
    """Bool mask of the ``count`` largest scores along the last dim.

    Ties: larger score first, equal scores -> the one earlier in the row first. The sort must be stable
    (``torch.topk`` is not); candidate rows are kept in ascending entry index, so earlier = lower index.
    """
    top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :count]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)


def refine_mask(score_q: Tensor, score_k: Tensor) -> Tensor:
    """``A ∪ B`` of README §3 for candidate rows ``[..., M]`` (ascending index): the refined candidates.

    ``A``: the 64 largest query scores. ``B``: the 64 largest key scores among the rest. Norms are >= 0,
    so masking ``A`` with -inf takes it out of the key ranking without touching the order of the rest.
    """
    by_query = _top_mask(score_q, PICKED_PER_SCORE)
    by_key = _top_mask(score_k.masked_fill(by_query, -math.inf), PICKED_PER_SCORE)
    return by_query | by_key


def lagged(scores: Tensor) -> Tensor:
    """README §8b: every entry's score replaced by that of the entry just before it at its level, ``[..., N_l]``.

    The score of entry ``i`` then reads only positions before the entry's span; entry 0 of a level, with nothing
    before it, gets -inf, the lowest score.
    """
    return F.pad(scores[..., :-1], (1, 0), value=-math.inf)


def reaches_cutoff(stream: Tensor, per_tile: int, quota: int) -> Tensor:
    """README §8b: whether each member of a stream ``[B, H, T * m]`` (``m = per_tile`` members per tile, in position
    order across tiles) reaches its rolling cutoff: the ``quota``-th largest score among the ``m`` members just
    before it; with ``j < m`` members before it (the first tile) the ``ceil(quota j / m)``-th largest of those, the
    same fraction; with none, +inf, which nothing reaches. Bool, ``[B, H, T * m]``.

    Counted, not sorted: a score reaches the r-th largest of a set exactly when fewer than r members of the set
    exceed it (ties included), so a comparison per member and window slot decides it (no top-k, no sort).
    """
    length = stream.shape[-1]
    # Row j: stream[j - m .. j - 1]; -inf pads before the stream, which exceed nothing.
    windows = F.pad(stream, (per_tile, 0), value=-math.inf).unfold(-1, per_tile, 1)[..., :length, :]
    above = (windows > stream.unsqueeze(-1)).sum(dim=-1)  # members of the window that exceed this one
    before = torch.arange(length, device=stream.device).clamp(max=per_tile)
    rank = (quota * before + per_tile - 1) // per_tile  # ceil; quota for a full window, 0 with nothing before
    return above < rank


def causal_walk(scores: Tensor, quota: int) -> Tensor:
    """README §8b: the ``quota`` members picked per tile of a stream of lagged scores ``[B, H, T, m]`` (bool, same
    shape), walking each tile in position order.

    A member is picked when its score reaches its rolling cutoff and fewer than ``quota`` were picked before it in
    its tile, or when the members left in the tile (itself included) are no more than the quota left (the fill).
    Written without a loop: until the fill starts the picks before a member are ``min(eligible before it,
    quota)``, and once the fill condition holds it holds for every later member, so it marks the fill exactly.
    """
    members = scores.shape[-1]
    eligible = reaches_cutoff(scores.flatten(2), members, quota).view_as(scores)
    seen = eligible.long().cumsum(-1)  # eligible members up to and including this one
    picked_before = (seen - eligible.long()).clamp(max=quota)
    left = members - torch.arange(members, device=scores.device)  # members from this one to the tile's end
    return (eligible & (seen <= quota)) | (left <= quota - picked_before)


def causal_refine_mask(lagged_q: Tensor, lagged_k: Tensor) -> Tensor:
    """The strictly causal ``A ∪ B`` of README §8b for the candidates ``[B, H, T, M]`` of one level (ascending
    index): ``A``, 64 by the lagged query score over all candidates; ``B``, 64 by the lagged key score over the
    ``M - 64`` others. Each walk picks exactly 64 per tile, so 128 are refined, as with the paper's rule."""
    batch, heads, tiles, count = lagged_q.shape
    by_query = causal_walk(lagged_q, PICKED_PER_SCORE)
    rest = lagged_k[~by_query].view(batch, heads, tiles, count - PICKED_PER_SCORE)  # row-major: order kept
    by_key = torch.zeros_like(by_query)
    by_key[~by_query] = causal_walk(rest, PICKED_PER_SCORE).flatten()
    return by_query | by_key


def position_key(level: Tensor, index: Tensor, refined: Tensor, levels: int, pooling_factor: int) -> Tensor:
    """README §4 ordering key times ``2^(L-1)``, so it is an exact int64.

    Leaf ``(l, i)``: ``c_l * i``; refined ``(l, i)``: ``c_l * (i + 1) - 2^(1-l)``, with ``c_l = p^(l-1)``.
    Among the emitted entries of one (batch, head) these keys are all distinct (README §4).
    """
    span = pooling_factor ** (level - 1)  # c_l, int64 tensor
    scale = 2 ** (levels - 1)
    leaf_key = span * index * scale
    refined_key = span * (index + 1) * scale - 2 ** (levels - level)
    return torch.where(refined, refined_key, leaf_key)


def _take(scores: Tensor, candidates: Tensor) -> Tensor:
    """Scores ``[B, H, N_l]`` of the candidates ``[B, H, T, M]`` -> ``[B, H, T, M]``."""
    return scores.gather(-1, candidates.flatten(2)).view_as(candidates)


@torch.no_grad()
def select_from_scores(
    score_q: list[Tensor], score_k: list[Tensor], geometry: LighthouseGeometry, causal: bool = False
) -> Selection:
    """Hierarchical top-k selection (README §3) and the compacted order (README §4) from given scores.

    ``score_q`` / ``score_k``: per level ``[B, H, N_l]``, base first (as ``entry_scores`` returns them).
    Kernel tests can feed the same scores to both paths and compare the selections exactly. ``causal``: the
    strictly causal refine rule of README §8b instead of §3's ranking; everything else is the same.
    """
    levels, p, tiles, per_tile = (
        geometry.levels,
        geometry.pooling_factor,
        geometry.num_tiles,
        geometry.coarse_per_tile,
    )
    batch, heads = score_q[0].shape[:2]
    device = score_q[0].device
    children = torch.arange(p, device=device)

    # Tiles own contiguous runs of coarsest entries; every candidate row stays in ascending index order.
    candidates = torch.arange(geometry.coarse_len, device=device).view(tiles, per_tile)
    candidates = candidates.expand(batch, heads, tiles, per_tile)  # [B, H, T, Nc]
    emitted: list[tuple[int, Tensor, Tensor]] = []  # (level, index [B, H, T, M], refined [B, H, T, M])
    if causal:
        score_q, score_k = [lagged(s) for s in score_q], [lagged(s) for s in score_k]
    refine = causal_refine_mask if causal else refine_mask
    for level in range(levels, 1, -1):
        refined = refine(_take(score_q[level - 1], candidates), _take(score_k[level - 1], candidates))
        emitted.append((level, candidates, refined))
        # Boolean indexing keeps row-major order, so parents (and hence children) stay ascending.
        parents = candidates[refined].view(batch, heads, tiles, REFINED_PER_TILE)
        candidates = (parents.unsqueeze(-1) * p + children).flatten(-2)  # [B, H, T, 128 * p]
    emitted.append((1, candidates, torch.zeros_like(candidates, dtype=torch.bool)))

    level = torch.cat([torch.full_like(index, lvl) for lvl, index, _ in emitted], dim=-1)  # [B, H, T, S_tile]
    index = torch.cat([index for _, index, _ in emitted], dim=-1)
    refined = torch.cat([mask for _, _, mask in emitted], dim=-1)
    # Tiles are contiguous in position, so sorting inside each tile and laying tiles end to end
    # gives the global order (the compacted sequence is tile-major).
    order = position_key(level, index, refined, levels, p).argsort(dim=-1, stable=True)
    return Selection(*(field.gather(-1, order).flatten(2) for field in (level, index, refined)))


def select_entries(
    q: Tensor,
    k: Tensor,
    v: Tensor | None = None,
    *,
    levels: int,
    pooling_factor: int,
    topk: int,
    selection: str = "paper",
    scorer: str = "norm",
    dilation: int = 4,
    causal: bool = False,
) -> Selection:
    """Scores + selection for ``q [B, N, H, D]`` and ``k`` (``[B, N, H_kv, D]`` for ``per_kv_group``); the
    result's fields are ``[B, H, S_sel]`` (``[B, H_kv, S_sel]``). ``v`` is needed by the dilated scorer only."""
    options = LayerOptions(levels, pooling_factor, topk, selection, scorer, dilation, causal)
    return _select(q, k, v, checked_geometry(q, k, v, options), options)


def _select(q: Tensor, k: Tensor, v: Tensor | None, geometry: LighthouseGeometry, options: LayerOptions) -> Selection:
    """The selection of README §2-§4; with ``k`` of fewer heads than ``q`` (``per_kv_group``), the scores of each
    query head are taken as if K/V were expanded to its head, then pooled by the max over the group (§3b)."""
    levels, p = geometry.levels, geometry.pooling_factor
    groups = q.shape[2] // k.shape[2]
    qh, kh = q.transpose(1, 2), expand_heads(k.transpose(1, 2), groups)  # [B, H, N, D]
    if options.scorer == "norm":
        score_q, score_k = entry_scores(qh, kh, levels, p)
    else:
        base_q, base_k = dilated_base_scores(qh, kh, expand_heads(v.transpose(1, 2), groups), options.dilation)
        score_q, score_k = pool_scores(base_q, levels, p), pool_scores(base_k, levels, p)
    score_q, score_k = ([group_max(s, groups) for s in scores] for scores in (score_q, score_k))
    return select_from_scores(score_q, score_k, geometry, options.causal)


# ---------------------------------------------------------------- gather, attention, scatter (README §5, §6)


def gather_selected(pyramid: list[Tensor], selection: Selection) -> Tensor:
    """Rows of the emitted entries in compacted order.

    ``pyramid``: per level ``[B, H, N_l, D]``, base first -> ``[B, H, S_sel, D]``.
    """
    dim = pyramid[0].shape[-1]
    offsets = level_offsets([x.shape[2] for x in pyramid], pyramid[0].device)
    flat = torch.cat(pyramid, dim=2)  # [B, H, N + N/p + ..., D]
    rows = offsets[selection.level] + selection.index  # [B, H, S_sel]
    return flat.gather(2, rows.unsqueeze(-1).expand(-1, -1, -1, dim))


def compacted_attention(q_sel: Tensor, k_sel: Tensor, v_sel: Tensor) -> Tensor:
    """Plain causal SDPA on the compacted sequence, ``[B, H, S_sel, D]``, scale ``1/sqrt(D)``; k and v may have
    fewer heads (``per_kv_group``: SDPA's ``enable_gqa`` pairs query head ``h`` with KV head ``h // groups``)."""
    scale = 1.0 / math.sqrt(q_sel.shape[-1])
    grouped = q_sel.shape[1] != k_sel.shape[1]
    return F.scaled_dot_product_attention(q_sel, k_sel, v_sel, is_causal=True, scale=scale, enable_gqa=grouped)


def scatter_back(o_sel: Tensor, selection: Selection, seq_len: int, levels: int, pooling_factor: int) -> Tensor:
    """Add each compacted output row to the base positions its entry covers, shifted right (README §6).

    Entry ``(l, i)`` with span ``c = p^(l-1)`` writes to positions ``i*c + c - 1 + j``, ``j = 0 .. c-1``,
    clipped to ``< N``. Equivalently, position ``n`` receives from level ``l`` the row of entry
    ``(n + 1) // c - 1`` if that entry was emitted at level ``l``. Positions receiving nothing are 0.
    Sums run in fp32 (fp64 for fp64 inputs). ``o_sel``: ``[B, H, S_sel, D]`` -> ``[B, H, N, D]``.
    """
    batch, heads, _, dim = o_sel.shape
    acc_dtype = accumulation_dtype(o_sel.dtype)
    sizes = level_sizes(seq_len, levels, pooling_factor)
    offsets = level_offsets(sizes, o_sel.device)
    rows = (offsets[selection.level] + selection.index).unsqueeze(-1).expand(-1, -1, -1, dim)
    # Every entry is emitted at most once, so scatter indices are unique and the result is deterministic.
    per_entry = o_sel.new_zeros(batch, heads, sum(sizes), dim, dtype=acc_dtype)
    per_entry = per_entry.scatter(2, rows, o_sel.to(acc_dtype))  # [B, H, N + N/p + ..., D], 0 if not emitted
    out = o_sel.new_zeros(batch, heads, seq_len, dim, dtype=acc_dtype)
    for level, entries in enumerate(per_entry.split(sizes, dim=2), start=1):
        span = pooling_factor ** (level - 1)
        spread = entries.repeat_interleave(span, dim=2)[:, :, : seq_len - span + 1]  # entry j -> j*c + (0..c-1)
        out = out + F.pad(spread, (0, 0, span - 1, 0))  # shift by c - 1: start at the span's last position
    return out.to(o_sel.dtype)


# ---------------------------------------------------------------- the layer


def lighthouse_from_selection(
    q: Tensor, k: Tensor, v: Tensor, selection: Selection, *, levels: int, pooling_factor: int
) -> Tensor:
    """The differentiable part of the layer for a given ``selection``: pool, gather, SDPA, scatter.

    ``q``: ``[B, N, H, D]``; ``k, v``: ``[B, N, H_kv, D]`` with ``H_kv`` dividing ``H`` (``H_kv = H`` for the
    paper's selection); ``selection`` has one row per KV head. Returns ``[B, N, H, D]`` in the input dtype.
    Gradients flow to ``q, k, v``; the selection is a constant (README §7).
    """
    check_inputs(q, k, v, grouped=True)
    batch, _, heads, _ = k.shape
    if selection.level.shape[:2] != (batch, heads) or not (
        selection.level.shape == selection.index.shape == selection.refined.shape
    ):
        raise ValueError(
            f"selection fields must all be [B, H, S_sel] with B={batch}, H={heads} (k's heads), got "
            f"{[tuple(f.shape) for f in selection]}"
        )
    return _attend(q, k, v, selection, levels, pooling_factor)


def _attend(q: Tensor, k: Tensor, v: Tensor, selection: Selection, levels: int, pooling_factor: int) -> Tensor:
    # per_kv_group: every query head of a group uses its KV head's selection (README §3b); K and V are gathered
    # once per KV head and SDPA pairs the heads.
    per_query_head = Selection(*(expand_heads(field, q.shape[2] // k.shape[2]) for field in selection))
    picked = [
        gather_selected(pool_pyramid(x.transpose(1, 2), levels, pooling_factor), sel)
        for x, sel in ((q, per_query_head), (k, selection), (v, selection))
    ]  # [B, H, S_sel, D], then 2 x [B, H_kv, S_sel, D]
    o_sel = compacted_attention(*picked)
    return scatter_back(o_sel, per_query_head, q.shape[1], levels, pooling_factor).transpose(1, 2)  # [B, N, H, D]


def naive_lighthouse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    levels: int,
    pooling_factor: int,
    topk: int,
    selection: str = "paper",
    scorer: str = "norm",
    dilation: int = 4,
    causal: bool = False,
) -> Tensor:
    """Lighthouse Attention, reference implementation.

    ``q``: ``[B, N, H, D]``; ``k, v``: ``[B, N, H, D]``, or ``[B, N, H_kv, D]`` with ``selection="per_kv_group"``
    (one selection per KV head, README §3b); any float dtype, any strides; returns ``[B, N, H, D]`` in the input
    dtype. ``scorer``: ``"norm"`` (README §2) or ``"dilated"`` (§2b, with ``dilation``). ``N`` must satisfy
    ``lighthouse_geometry`` (short sequences use fewer tiles; see README.md). ``causal``: the strictly causal
    selection (README §8b), no output before any position ``t`` depends on inputs at ``t`` or later.
    """
    options = LayerOptions(levels, pooling_factor, topk, selection, scorer, dilation, causal)
    selected = _select(q, k, v, checked_geometry(q, k, v, options), options)
    return _attend(q, k, v, selected, levels, pooling_factor)
