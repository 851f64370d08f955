"""The strictly causal selection (README §8b, ``causal=True``): no output before any position ``t`` depends on an
input at ``t`` or later, for every ``t``, not only tile boundaries.

The selection is checked against a python-loop transcription of §8b (sequential walks with explicit windows and
counters, none of naive.py's vectorised shortcuts) and on a crafted score pattern whose refined set is written
down by hand; the rest of the layer is §4-§6 unchanged, pinned by test_lighthouse_naive.py. With ``causal=False``
nothing changes: the other op test files run with the default. The Triton path with ``causal=True`` is compared
with the reference in test_lighthouse_triton.py (``test_causal_matches_reference_fp32``).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_lighthouse_naive import Case, emitted_per_head, params, plain_key

from lighthouse.ops.lighthouse import naive_lighthouse_attention, select_entries
from lighthouse.ops.lighthouse.geometry import lighthouse_geometry
from lighthouse.ops.lighthouse.naive import (
    entry_scores,
    lighthouse_from_selection,
    select_from_scores,
)

QUOTA = 64  # picked per tile and level by each score kind (README §3)


def plain_walk(tiles: list[list[int]], lagged: dict[int, float]) -> set[int]:
    """README §8b, one score kind, literally: walk each tile's members in order; a member's cutoff is the
    ``ceil(64 j / m)``-th largest lagged score of the ``j = min(m, members so far)`` members before it in the
    stream (+inf when there are none); pick it when it reaches the cutoff and the quota is not used up, or when
    the members left in its tile are no more than the quota left."""
    picked, history = set(), []
    for members in tiles:
        m, count = len(members), 0
        for j, c in enumerate(members):
            window = sorted(history[-m:], reverse=True)
            cutoff = window[math.ceil(QUOTA * len(window) / m) - 1] if window else math.inf
            if (lagged[c] >= cutoff and count < QUOTA) or m - j <= QUOTA - count:
                picked.add(c)
                count += 1
            history.append(lagged[c])
        assert count == QUOTA
    return picked


def plain_causal_selection(score_q: list[torch.Tensor], score_k: list[torch.Tensor], case: Case) -> list[list[list]]:
    """§3's loop over levels with §8b's refine rule. ``score_*``: per level ``[B, H, N_l]``. Entries [b][h]."""
    L, p = case.L, case.p
    geometry = lighthouse_geometry(case.N, L, p, case.K)
    tiles, per_tile = geometry.num_tiles, geometry.coarse_per_tile
    result = []
    for b in range(case.B):
        result.append([])
        for h in range(case.H):
            entries = []
            candidates = [list(range(t * per_tile, (t + 1) * per_tile)) for t in range(tiles)]
            for level in range(L, 1, -1):
                # The lagged score of entry i: the score of entry i - 1 of its level; -inf for entry 0.
                lag_q, lag_k = (
                    {i: s[b, h, i - 1].item() if i else -math.inf for tile in candidates for i in tile}
                    for s in (score_q[level - 1], score_k[level - 1])
                )
                by_q = plain_walk(candidates, lag_q)
                by_k = plain_walk([[i for i in tile if i not in by_q] for tile in candidates], lag_k)
                refined = by_q | by_k
                for tile in candidates:
                    entries += [(level, i, i in refined) for i in tile]
                candidates = [[i * p + j for i in tile if i in refined for j in range(p)] for tile in candidates]
            entries += [(1, i, False) for tile in candidates for i in tile]
            result[b].append(entries)
    return result


def check_against_plain(q: torch.Tensor, k: torch.Tensor, case: Case) -> None:
    sel = select_entries(q, k, **case.params, causal=True)
    score_q, score_k = entry_scores(q.transpose(1, 2), k.transpose(1, 2), case.L, case.p)
    expected = plain_causal_selection(score_q, score_k, case)
    for b in range(case.B):
        for h in range(case.H):
            got = emitted_per_head(sel, b, h)
            assert got == sorted(expected[b][h], key=lambda e: plain_key(*e, case.p)), f"b={b} h={h}"


CASES = params(Case(2, 1024, 3, 8, 2, 2, 256), Case(1, 2048, 2, 8, 3, 2, 256), Case(1, 4096, 1, 8, 3, 4, 384))


# ---------------------------------------------------------------- the selection


@pytest.mark.parametrize("case", CASES)
def test_causal_selection_matches_a_plain_loop(case: Case):
    q, k, _ = case.qkv(seed=20)
    check_against_plain(q, k, case)


def test_causal_selection_ties_match_a_plain_loop():
    # Rows of -1, 0, 1: norms are square roots of small integers, so lagged scores tie with their cutoffs everywhere.
    case = Case(1, 1024, 2, 4, 2, 2, 256)
    gen = torch.Generator().manual_seed(21)
    q, k = (torch.randint(-1, 2, (case.B, case.N, case.H, case.D), generator=gen).float() for _ in range(2))
    check_against_plain(q, k, case)


def test_causal_selection_on_a_crafted_pattern():
    # L=2, p=2, N=1024, K=256: 2 tiles of 256 level-2 candidates. Query scores are 1 at entries 3, 7, 11, ... and 0
    # elsewhere, so the lagged query score is 1 exactly at the multiples of 4 (but not at entry 0, which gets -inf);
    # key scores are all 0. Second tile: every window of the 256 candidates before a candidate holds 64 ones (the
    # first, 0..255, holds 63 and a -inf: cutoff 0, and 256 has lagged score 1 anyway), so A = the 64 multiples of 4;
    # every key cutoff is 0, so B = the first 64 others: 257..341 without the multiples of 4. First tile: with j
    # candidates before it a candidate's cutoff is the ceil(j/4)-th largest of j lagged scores, which holds fewer
    # than ceil(j/4) ones, so it is 0 and every candidate but the first (cutoff +inf) is eligible: A = 1..64; then
    # B's first member, entry 0, has lagged -inf and no past, the rest are eligible: B = 65..128.
    geometry = lighthouse_geometry(1024, 2, 2, 256)
    level2 = torch.zeros(1, 1, 512)
    level2[..., 3::4] = 1.0
    zeros = [torch.zeros(1, 1, 1024), torch.zeros(1, 1, 512)]
    sel = select_from_scores([zeros[0], level2], zeros, geometry, causal=True)
    refined = set(sel.index[sel.refined & (sel.level == 2)].tolist())
    second = set(range(256, 512, 4)) | {i for i in range(257, 342) if i % 4}
    assert refined == set(range(1, 129)) | second
    assert sel.level.shape[-1] == geometry.selected_len


@pytest.mark.parametrize("case", CASES)
def test_causal_selection_keeps_the_papers_sizes(case: Case):
    # Every tile and level >= 2 refines exactly 128 (64 per score kind), so S_sel and the per-level counts are the
    # paper's (README §3), no entry is emitted twice and the leaves partition [0, N): §4-§6 apply unchanged.
    q, k, _ = case.qkv(seed=22)
    sel = select_entries(q, k, **case.params, causal=True)
    geometry = lighthouse_geometry(case.N, case.L, case.p, case.K)
    assert all(field.shape == (case.B, case.H, geometry.selected_len) for field in sel)
    for level in range(2, case.L + 1):
        per_tile = (sel.refined & (sel.level == level)).view(case.B, case.H, geometry.num_tiles, -1).sum(-1)
        assert torch.all(per_tile == 128), level
    for b in range(case.B):
        for h in range(case.H):
            level, index, refined = sel.level[b, h], sel.index[b, h], sel.refined[b, h]
            assert (level * case.N + index).unique().numel() == level.numel(), "an entry emitted twice"
            span = case.p ** (level[~refined] - 1)
            starts = index[~refined] * span
            covered = torch.zeros(case.N, dtype=torch.long)
            for start, width in zip(starts.tolist(), span.tolist(), strict=True):
                covered[start : start + width] += 1
            assert torch.all(covered == 1), "leaf spans must partition [0, N)"


def test_causal_selection_differs_from_the_papers():
    case = Case(1, 4096, 2, 16, 3, 4, 256)
    q, k, _ = case.qkv(seed=23)
    paper, causal = (select_entries(q, k, **case.params, causal=c) for c in (False, True))
    assert not torch.equal(paper.index, causal.index)


# ---------------------------------------------------------------- strict causality (README §8, §8b)


@pytest.mark.parametrize(
    "opts",
    [dict(), dict(selection="per_kv_group"), dict(scorer="dilated")],
    ids=["paper", "per_kv_group", "dilated"],
)
def test_no_output_before_any_t_changes(opts):
    # t inside tiles (1, 2, the middle, one before and one after the tile boundary 1024, the last position), not
    # only at boundaries: the paper's rule fails this inside a tile (test_within_tile_look_ahead_exists). L=3, p=2:
    # 256 candidates per tile at both refined levels, so every decision depends on the scores.
    case = Case(1, 2048, 2, 8, 3, 2, 256)
    kv_heads = 1 if opts.get("selection") else 2
    gen = torch.Generator().manual_seed(24)
    q, k, v = (torch.randn(1, case.N, h, case.D, generator=gen) for h in (case.H, kv_heads, kv_heads))
    out = naive_lighthouse_attention(q, k, v, **case.params, **opts, causal=True)
    for t in (1, 2, 700, 1023, 1025, 1500, 2047):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, t:] = 10 * torch.randn(x[:, t:].shape, generator=gen)
        out2 = naive_lighthouse_attention(q2, k2, v2, **case.params, **opts, causal=True)
        assert torch.equal(out[:, :t], out2[:, :t]), f"an output before t={t} changed"
        assert not torch.equal(out[:, t:], out2[:, t:])  # the perturbation did reach the layer


def test_within_tile_look_ahead_is_gone():
    # test_within_tile_look_ahead_exists, with the option: the queries after t, scaled up, would take the paper's
    # query-score refinements of the tile; under §8b no decision before t can see them.
    case = Case(1, 4096, 2, 32, 3, 4, 256)
    q, k, v = case.qkv(seed=5)
    t = case.N // 2 + case.N // 4
    out = naive_lighthouse_attention(q, k, v, **case.params, causal=True)
    q2 = q.clone()
    q2[:, t:] *= 100
    out2 = naive_lighthouse_attention(q2, k, v, **case.params, causal=True)
    assert torch.equal(out[:, :t], out2[:, :t])
    assert not torch.equal(out[:, t:], out2[:, t:])


# ---------------------------------------------------------------- gradients and options


def test_causal_gradcheck_fixed_selection_and_gradients_flow():
    case = Case(1, 512, 2, 3, 3, 2, 128)
    q, k, v = (x.double().requires_grad_() for x in case.qkv(seed=26))
    sel = select_entries(q, k, **case.params, causal=True)
    assert not any(field.requires_grad for field in sel)

    def layer(q, k, v):
        return lighthouse_from_selection(q, k, v, sel, levels=case.L, pooling_factor=case.p)

    assert torch.autograd.gradcheck(layer, (q, k, v), fast_mode=True)
    out = naive_lighthouse_attention(q, k, v, **case.params, causal=True)
    torch.testing.assert_close(out, layer(q, k, v), rtol=0, atol=0)
    out.backward(torch.randn_like(out))
    for name, x in zip("qkv", (q, k, v), strict=True):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name


def test_invalid_causal_names_the_field():
    q = torch.zeros(1, 512, 1, 4)
    with pytest.raises(ValueError, match=r"causal='yes' is invalid: it must be a bool"):
        naive_lighthouse_attention(q, q, q, levels=2, pooling_factor=4, topk=128, causal="yes")
