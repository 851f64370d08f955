"""Tests of the plain-PyTorch Lighthouse reference (src/lighthouse/ops/lighthouse/naive.py).

The reference is the specification the kernels are tested against, so these tests check it against
independent, deliberately plain re-implementations of the contract (python loops, dense matrices) rather than
against itself. Sections (§) are those of the op's contract, src/lighthouse/ops/lighthouse/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lighthouse.ops.lighthouse import (
    Selection,
    check_lighthouse_params,
    lighthouse_geometry,
    min_seq_len,
    naive_lighthouse_attention,
    select_entries,
)
from lighthouse.ops.lighthouse.naive import (
    entry_scores,
    gather_selected,
    lighthouse_from_selection,
    pool_pyramid,
    position_key,
    scatter_back,
)


@dataclass(frozen=True)
class Case:
    B: int
    N: int
    H: int
    D: int
    L: int
    p: int
    K: int

    @property
    def id(self) -> str:
        return f"B{self.B}-N{self.N}-H{self.H}-D{self.D}-L{self.L}-p{self.p}-k{self.K}"

    @property
    def params(self) -> dict:
        return {"levels": self.L, "pooling_factor": self.p, "topk": self.K}

    def effective_topk(self) -> int:
        # The short-sequence rule written plainly: as many tiles as topk asks for, but no more than
        # whole tiles of 128 coarsest entries fit.
        return 128 * min(self.K // 128, self.N // (128 * self.p ** (self.L - 1)))

    def qkv(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(self.B, self.N, self.H, self.D, generator=gen).to(dtype) for _ in range(3))


def params(*cases: Case) -> list:
    return [pytest.param(c, id=c.id) for c in cases]


# Awkward on purpose: H=3, B=2, Nc not a power of two (800, 160), several tiles, short sequences
# (effective top-k below topk), L = 2..4 and p = 2, 4, 8.
SELECTION_CASES = params(
    Case(1, 4096, 2, 64, 3, 4, 256),  # 2 tiles of 128 coarsest entries
    Case(2, 1024, 3, 32, 2, 8, 256),  # short: topk 256 asks for 2 tiles, 1 fits
    Case(1, 2048, 3, 128, 4, 2, 512),  # short: 2 of 4 tiles
    Case(2, 1536, 1, 64, 2, 4, 384),  # 3 tiles
    Case(1, 3200, 2, 16, 2, 2, 256),  # Nc = 800
    Case(1, 5120, 1, 8, 3, 4, 256),  # Nc = 160
    Case(1, 8192, 1, 8, 4, 4, 128),  # L = 4, one tile
)
DENSE_CASES = params(
    Case(1, 1024, 3, 32, 2, 8, 256),
    Case(2, 2048, 1, 64, 4, 2, 512),
    Case(1, 1536, 2, 128, 2, 4, 384),
    Case(1, 4096, 1, 64, 3, 4, 256),
)


def emitted_per_head(sel: Selection, b: int, h: int) -> list[tuple[int, int, bool]]:
    return list(zip(sel.level[b, h].tolist(), sel.index[b, h].tolist(), sel.refined[b, h].tolist(), strict=True))


def plain_key(level: int, index: int, refined: bool, p: int) -> Fraction:
    """README §4, literally: leaf c*i, refined c*(i+1) - 2^(1-l)."""
    c = p ** (level - 1)
    return Fraction(c * (index + 1)) - Fraction(1, 2 ** (level - 1)) if refined else Fraction(c * index)


def brute_force_selection(score_q: torch.Tensor, score_k: torch.Tensor, case: Case) -> list[list[list]]:
    """README §3 in python loops. ``score_*``: base scores [B, H, N]. Returns entries [b][h] (unordered)."""
    L, p = case.L, case.p
    tiles = case.effective_topk() // 128
    coarse_len = case.N // p ** (L - 1)
    per_tile = coarse_len // tiles
    result = []
    for b in range(case.B):
        result.append([])
        for h in range(case.H):
            base_q, base_k = score_q[b, h].tolist(), score_k[b, h].tolist()

            def score(base: list, level: int, i: int) -> float:
                c = p ** (level - 1)
                return max(base[i * c : (i + 1) * c])

            entries = []
            for t in range(tiles):
                candidates = list(range(t * per_tile, (t + 1) * per_tile))
                for level in range(L, 1, -1):
                    # Larger score first; equal scores -> lower index first (the README's tie rule).
                    by_q = sorted(candidates, key=lambda i: (-score(base_q, level, i), i))[:64]
                    rest = [i for i in candidates if i not in by_q]
                    by_k = sorted(rest, key=lambda i: (-score(base_k, level, i), i))[:64]
                    refined = set(by_q) | set(by_k)
                    assert len(refined) == 128
                    entries += [(level, i, i in refined) for i in candidates]
                    candidates = [i * p + j for i in sorted(refined) for j in range(p)]
                entries += [(1, i, False) for i in candidates]
            result[b].append(entries)
    return result


def plain_counts(sel: Selection, case: Case) -> torch.Tensor:
    """Contributions per base position [B, H, N] from the Selection, by the rule of README §6:
    position n gets one from level l iff entry (n+1)//c_l - 1 >= 0 is emitted at level l."""
    counts = torch.zeros(case.B, case.H, case.N, dtype=torch.long)
    n = torch.arange(case.N)
    for b in range(case.B):
        for h in range(case.H):
            for level in range(1, case.L + 1):
                c = case.p ** (level - 1)
                emitted = torch.zeros(case.N // c, dtype=torch.bool)
                emitted[sel.index[b, h][sel.level[b, h] == level]] = True
                j = (n + 1) // c - 1
                counts[b, h] += (j >= 0) & emitted[j.clamp(min=0)]
    return counts


def dense_reference(q, k, v, sel: Selection, case: Case) -> torch.Tensor:
    """README §1, §5, §6 with dense matrices in float64: pooling as a [S, N] averaging matrix, attention as
    matmul + explicit causal mask + softmax, scatter as a [N, S] 0/1 matrix."""
    out = torch.zeros(case.B, case.N, case.H, case.D, dtype=torch.float64)
    for b in range(case.B):
        for h in range(case.H):
            entries = emitted_per_head(sel, b, h)
            S = len(entries)
            pool = torch.zeros(S, case.N, dtype=torch.float64)
            spread = torch.zeros(case.N, S, dtype=torch.float64)
            for s, (level, i, _) in enumerate(entries):
                c = case.p ** (level - 1)
                pool[s, i * c : (i + 1) * c] = 1.0 / c
                spread[i * c + c - 1 : i * c + 2 * c - 1, s] = 1.0  # slicing clips at N
            qs, ks, vs = (pool @ x[b, :, h].double() for x in (q, k, v))
            logits = qs @ ks.T / math.sqrt(case.D)
            logits = logits.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), -math.inf)
            out[b, :, h] = spread @ (logits.softmax(dim=-1) @ vs)
    return out


# ---------------------------------------------------------------- 1. S_sel


@pytest.mark.parametrize("case", SELECTION_CASES)
def test_selected_len(case: Case):
    q, k, _ = case.qkv()
    sel = select_entries(q, k, **case.params)
    k_eff = case.effective_topk()
    s_sel = case.N // case.p ** (case.L - 1) + (case.L - 1) * case.p * k_eff
    assert lighthouse_geometry(case.N, case.L, case.p, case.K).selected_len == s_sel
    for field in sel:
        assert field.shape == (case.B, case.H, s_sel)
    assert sel.level.dtype == sel.index.dtype == torch.long and sel.refined.dtype == torch.bool
    # Per (b, h): the coarsest level emits all its entries, every finer level 128 * p per tile,
    # and every level but the base refines exactly 128 per tile.
    for level in range(1, case.L + 1):
        at_level = sel.level == level
        expected = case.N // case.p ** (case.L - 1) if level == case.L else case.p * k_eff
        assert torch.all(at_level.sum(-1) == expected)
        expected_refined = 0 if level == 1 else k_eff
        assert torch.all((at_level & sel.refined).sum(-1) == expected_refined)
    for b in range(case.B):
        for h in range(case.H):
            level, index, refined = sel.level[b, h], sel.index[b, h], sel.refined[b, h]
            assert (level * case.N + index).unique().numel() == level.numel(), "an entry emitted twice"
            span = case.p ** (level[~refined] - 1)
            first = (index[~refined] * span).repeat_interleave(span)
            offset = torch.arange(first.numel()) - (span.cumsum(0) - span).repeat_interleave(span)
            covered = torch.bincount(first + offset, minlength=case.N)
            assert torch.all(covered == 1), "leaf spans must partition [0, N)"


# ---------------------------------------------------------------- 2. selection sets and order


def check_against_brute_force(q, k, case: Case):
    sel = select_entries(q, k, **case.params)
    # The brute force ranks by the reference's fp32 base norms, so a last-ulp difference between two norm
    # formulas cannot flip a near-tie; those norms are checked against torch.linalg.vector_norm here.
    score_q, score_k = (s[0] for s in entry_scores(q.transpose(1, 2), k.transpose(1, 2), case.L, case.p))
    torch.testing.assert_close(score_q, torch.linalg.vector_norm(q.float(), dim=-1).transpose(1, 2))
    expected = brute_force_selection(score_q, score_k, case)
    for b in range(case.B):
        for h in range(case.H):
            got = emitted_per_head(sel, b, h)
            assert set(got) == set(expected[b][h]), f"selection sets differ at b={b} h={h}"
            keys = [plain_key(level, i, r, case.p) for level, i, r in got]
            assert len(set(keys)) == len(keys), "README §4 keys are distinct among emitted entries"
            assert got == sorted(expected[b][h], key=lambda e: plain_key(*e, case.p)), f"order b={b} h={h}"


@pytest.mark.parametrize("case", SELECTION_CASES)
def test_selection_matches_brute_force(case: Case):
    q, k, _ = case.qkv(seed=1)
    check_against_brute_force(q, k, case)


@pytest.mark.parametrize("case", params(Case(2, 2048, 3, 8, 3, 2, 256), Case(1, 1024, 2, 4, 2, 4, 256)))
def test_selection_tie_break(case: Case):
    # Small integer rows: norms are square roots of small integers, so exact ties are everywhere,
    # at the base and (through max pooling) at every coarser level. Ties go to the lower index.
    gen = torch.Generator().manual_seed(2)
    q, k = (torch.randint(-1, 2, (case.B, case.N, case.H, case.D), generator=gen).float() for _ in range(2))
    check_against_brute_force(q, k, case)


def test_position_key_matches_spec():
    L, p = 4, 2
    level = torch.tensor([1, 2, 2, 3, 4, 4])
    index = torch.tensor([5, 3, 3, 1, 0, 7])
    refined = torch.tensor([False, False, True, True, True, False])
    got = position_key(level, index, refined, L, p)
    expected = [
        plain_key(lv, i, r, p) * 2 ** (L - 1)
        for lv, i, r in zip(level.tolist(), index.tolist(), refined.tolist(), strict=True)
    ]
    assert got.dtype == torch.long and got.tolist() == expected


# ---------------------------------------------------------------- 3. causality (README §8)


@pytest.mark.parametrize(
    "case",
    params(Case(1, 4096, 2, 32, 3, 4, 256), Case(2, 1536, 3, 16, 2, 4, 384), Case(1, 2048, 1, 64, 4, 2, 512)),
)
def test_strict_causality_across_tiles(case: Case):
    q, k, v = case.qkv(seed=3)
    out = naive_lighthouse_attention(q, k, v, **case.params)
    tile_len = case.N // (case.effective_topk() // 128)
    assert case.N // tile_len >= 2
    gen = torch.Generator().manual_seed(4)
    for t in range(tile_len, case.N, tile_len):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, t:] = 10 * torch.randn(x[:, t:].shape, generator=gen)
        out2 = naive_lighthouse_attention(q2, k2, v2, **case.params)
        assert torch.equal(out[:, :t], out2[:, :t]), f"output before tile boundary t={t} changed"
        assert not torch.equal(out[:, t:], out2[:, t:])  # the perturbation did reach the layer


def test_within_tile_look_ahead_exists():
    # README §8: the paper's selection ranks all entries of a tile together, so scores of positions after t
    # decide which entries before t are refined. Here t is in the middle of the second tile and every query
    # after t is scaled up: they take all 64 query-score refinement slots at level 2, so some earlier entries
    # lose theirs and outputs before t change. Outputs before the tile start must not change.
    case = Case(1, 4096, 2, 32, 3, 4, 256)
    q, k, v = case.qkv(seed=5)
    tile_len = case.N // 2
    t = tile_len + tile_len // 2
    out = naive_lighthouse_attention(q, k, v, **case.params)
    q2 = q.clone()
    q2[:, t:] *= 100
    out2 = naive_lighthouse_attention(q2, k, v, **case.params)
    assert torch.equal(out[:, :tile_len], out2[:, :tile_len])
    assert not torch.equal(out[:, tile_len:t], out2[:, tile_len:t]), "expected the within-tile look-ahead"


# ---------------------------------------------------------------- 4. coverage


@pytest.mark.parametrize("case", SELECTION_CASES)
def test_coverage(case: Case):
    q, k, _ = case.qkv(seed=6)
    sel = select_entries(q, k, **case.params)
    counts = plain_counts(sel, case)  # [B, H, N]
    assert counts.min() >= 0 and counts.max() <= case.L
    assert torch.all(counts[:, :, case.p ** (case.L - 1) - 1 :] >= 1), "the coarsest level covers every span"

    # The scatter stage alone, fed rows of ones: sums of 1.0 are exact, so the output IS the count.
    s_sel = sel.level.shape[-1]
    ones = torch.ones(case.B, case.H, s_sel, 2)
    spread = scatter_back(ones, sel, case.N, case.L, case.p)  # [B, H, N, 2]
    assert torch.equal(spread, counts.unsqueeze(-1).float().expand_as(spread))

    # The whole layer with v = 1: each SDPA row is a convex combination of ones, i.e. 1 up to rounding,
    # so the output is the count to 1e-5, and exactly 0 where nothing was written.
    v = torch.ones(case.B, case.N, case.H, case.D)
    out = naive_lighthouse_attention(q, k, v, **case.params).transpose(1, 2)  # [B, H, N, D]
    expected = counts.unsqueeze(-1).float().expand_as(out)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert torch.all(out[counts == 0] == 0)


@pytest.mark.parametrize("case", params(Case(1, 2048, 3, 16, 3, 4, 256), Case(2, 1024, 1, 8, 4, 2, 256)))
def test_gather_reads_only_emitted_entries(case: Case):
    # NaN poisoning: every pyramid entry that is NOT emitted is NaN, so a gather that read one would
    # leave a NaN in the compacted rows; emitted entries carry their own id so misplaced rows show up.
    q, k, _ = case.qkv(seed=7)
    sel = select_entries(q, k, **case.params)
    sizes = [case.N // case.p ** (level - 1) for level in range(1, case.L + 1)]
    pyramid = [torch.full((case.B, case.H, n, 1), math.nan) for n in sizes]
    for b in range(case.B):
        for h in range(case.H):
            for level, i, _ in emitted_per_head(sel, b, h):
                pyramid[level - 1][b, h, i, 0] = 1000.0 * level + i
    rows = gather_selected(pyramid, sel)  # [B, H, S_sel, 1]
    assert not rows.isnan().any()
    assert torch.equal(rows[..., 0], (1000 * sel.level + sel.index).float())


# ---------------------------------------------------------------- 5. against a dense plain implementation


@pytest.mark.parametrize("case", DENSE_CASES)
def test_matches_dense_reference(case: Case):
    q, k, v = case.qkv(seed=8)
    out = naive_lighthouse_attention(q, k, v, **case.params)
    assert out.shape == q.shape and out.dtype == torch.float32
    expected = dense_reference(q, k, v, select_entries(q, k, **case.params), case)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_pool_pyramid_is_mean_of_base():
    x = torch.randn(2, 3, 64, 5)
    pyramid = pool_pyramid(x, 3, 4)
    assert [t.shape[2] for t in pyramid] == [64, 16, 4] and pyramid[0] is x
    torch.testing.assert_close(pyramid[2][1, 2, 3], x[1, 2, 48:64].mean(0))
    torch.testing.assert_close(pyramid[1][0, 1, 5], x[0, 1, 20:24].mean(0))


def test_noncontiguous_inputs():
    case = Case(1, 1024, 2, 32, 2, 8, 128)
    q, k, v = case.qkv(seed=9)
    # Same values, head-major storage: [B, H, N, D] transposed to [B, N, H, D].
    qt, kt, vt = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))
    assert not qt.is_contiguous()
    torch.testing.assert_close(
        naive_lighthouse_attention(qt, kt, vt, **case.params),
        naive_lighthouse_attention(q, k, v, **case.params),
    )


# ---------------------------------------------------------------- 6. gradients


def test_gradients_finite_and_nonzero():
    case = Case(2, 1024, 3, 32, 3, 2, 256)
    q, k, v = (x.requires_grad_() for x in case.qkv(seed=10))
    out = naive_lighthouse_attention(q, k, v, **case.params)
    out.backward(torch.randn_like(out))
    for name, x in zip("qkv", (q, k, v), strict=True):
        assert x.grad is not None and torch.isfinite(x.grad).all(), name
        assert x.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", params(Case(1, 256, 1, 4, 2, 2, 128), Case(1, 512, 2, 3, 3, 2, 128)))
def test_gradcheck_fixed_selection(case: Case):
    q, k, v = (x.double().requires_grad_() for x in case.qkv(seed=11))
    sel = select_entries(q, k, **case.params)

    def layer(q, k, v):
        return lighthouse_from_selection(q, k, v, sel, levels=case.L, pooling_factor=case.p)

    assert torch.autograd.gradcheck(layer, (q, k, v), fast_mode=True)


def test_selection_carries_no_gradient():
    case = Case(1, 256, 1, 4, 2, 2, 128)
    q, k, _ = (x.requires_grad_() for x in case.qkv(seed=12))
    sel = select_entries(q, k, **case.params)
    assert not any(field.requires_grad for field in sel)


# ---------------------------------------------------------------- 7. short sequences and invalid parameters


def test_short_sequence_uses_fewer_tiles():
    # L=3, p=4: one tile needs 128 * 16 = 2048 positions; topk=2048 asks for 16 tiles, N=4096 fits 2.
    geometry = lighthouse_geometry(4096, 3, 4, 2048)
    assert (geometry.num_tiles, geometry.effective_topk, geometry.coarse_per_tile) == (2, 256, 128)
    q, k, v = Case(1, 4096, 1, 8, 3, 4, 2048).qkv()
    sel = select_entries(q, k, levels=3, pooling_factor=4, topk=2048)
    assert sel.level.shape[-1] == 4096 // 16 + 2 * 4 * 256 == geometry.selected_len
    assert naive_lighthouse_attention(q, k, v, levels=3, pooling_factor=4, topk=2048).shape == q.shape
    # Long enough for every tile: the effective top-k is topk.
    assert lighthouse_geometry(32768, 3, 4, 2048).effective_topk == 2048
    assert min_seq_len(3, 4) == 2048


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"levels": 1}, r"levels=1 is invalid: it must be an integer >= 2", id="levels1"),
        pytest.param({"pooling_factor": 3}, r"pooling_factor=3 is invalid: .*power of two", id="p3"),
        pytest.param({"pooling_factor": 1}, r"pooling_factor=1 is invalid", id="p1"),
        pytest.param({"topk": 100}, r"topk=100 is invalid: .*multiple of 128", id="k100"),
        pytest.param({"topk": 0}, r"topk=0 is invalid", id="k0"),
        pytest.param({"seq_len": 1024}, r"sequence length 1024 is too short.* >= .* = 2048", id="N1024-too-short"),
        pytest.param({"seq_len": 2064 + 16 * 128}, r"must be a multiple of .* = 32", id="N4112-uneven-tiles"),
    ],
)
def test_invalid_parameters(kwargs: dict, match: str):
    args = {"seq_len": 4096, "levels": 3, "pooling_factor": 4, "topk": 512} | kwargs
    with pytest.raises(ValueError, match=match):
        lighthouse_geometry(**args)
    seq_len = args.pop("seq_len")
    if seq_len == 4096:
        with pytest.raises(ValueError, match=match):
            check_lighthouse_params(**args)
    q = torch.zeros(1, seq_len, 1, 4)
    with pytest.raises(ValueError, match=match):
        naive_lighthouse_attention(q, q, q, **args)


def test_invalid_inputs():
    q = torch.zeros(1, 256, 1, 4)
    with pytest.raises(ValueError, match="same shape"):
        naive_lighthouse_attention(q, q, torch.zeros(1, 256, 2, 4), levels=2, pooling_factor=2, topk=128)
    with pytest.raises(ValueError, match=r"q must be \[B, N, H, D\]"):
        naive_lighthouse_attention(q[0], q[0], q[0], levels=2, pooling_factor=2, topk=128)
    with pytest.raises(ValueError, match="floating point"):
        qi = q.long()
        naive_lighthouse_attention(qi, qi, qi, levels=2, pooling_factor=2, topk=128)


# ---------------------------------------------------------------- 8. dtypes


@pytest.mark.parametrize(
    ("dtype", "atol"),
    # Loose: the low-precision path rounds the pooled means, SDPA and the sum of up to L contributions to
    # bf16 (8 mantissa bits) / fp16 (11); outputs are O(1) sums of up to L attention rows.
    # Measured on this case: 0.015 (bf16) and 0.0015 (fp16); the bounds leave about 2x headroom.
    [pytest.param(torch.bfloat16, 3e-2, id="bf16"), pytest.param(torch.float16, 4e-3, id="fp16")],
)
def test_low_precision_close_to_fp32(dtype: torch.dtype, atol: float):
    case = Case(2, 1024, 3, 64, 2, 8, 256)
    q, k, v = case.qkv(seed=13, dtype=dtype)
    out = naive_lighthouse_attention(q, k, v, **case.params)
    assert out.dtype == dtype and out.shape == q.shape
    # Upcasting is exact, so both runs rank the same fp32 scores and select the same entries.
    sel, sel32 = select_entries(q, k, **case.params), select_entries(q.float(), k.float(), **case.params)
    assert all(torch.equal(a, b) for a, b in zip(sel, sel32, strict=True))
    expected = naive_lighthouse_attention(q.float(), k.float(), v.float(), **case.params)
    torch.testing.assert_close(out.float(), expected, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")])
def test_stages_accumulate_in_fp32(dtype: torch.dtype):
    # Means and the scatter's sums run in fp32 and are rounded to the input dtype once, at the end.
    case = Case(1, 512, 2, 8, 3, 2, 128)
    x = torch.randn(1, 2, 512, 8).to(dtype)
    pyramid = pool_pyramid(x, case.L, case.p)
    assert all(level.dtype == dtype for level in pyramid)
    assert torch.equal(pyramid[2], x.float().reshape(1, 2, 128, 4, 8).mean(dim=3).to(dtype))
    q, k, _ = case.qkv(seed=15)
    sel = select_entries(q, k, **case.params)
    o_sel = torch.randn(1, 2, sel.level.shape[-1], 8).to(dtype)
    out = scatter_back(o_sel, sel, case.N, case.L, case.p)
    assert out.dtype == dtype
    assert torch.equal(out, scatter_back(o_sel.float(), sel, case.N, case.L, case.p).to(dtype))


def test_float64_runs():
    case = Case(1, 256, 2, 8, 2, 2, 128)
    q, k, v = case.qkv(seed=14, dtype=torch.float64)
    out = naive_lighthouse_attention(q, k, v, **case.params)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, dense_reference(q, k, v, select_entries(q, k, **case.params), case))


# ---------------------------------------------------------------- invariants over random geometries


@settings(max_examples=30, deadline=None)
@given(
    levels=st.integers(2, 4),
    log_p=st.integers(1, 3),
    tiles=st.integers(1, 3),
    extra_tiles=st.integers(0, 2),
    per_tile_extra=st.integers(0, 40),
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_selection_invariants_random_geometry(levels, log_p, tiles, extra_tiles, per_tile_extra, batch, heads, seed):
    p = 2**log_p
    if p ** (levels - 1) > 64:  # keep N small enough for a 2-core CPU
        p = 2
    span = p ** (levels - 1)
    n = tiles * (128 + per_tile_extra) * span
    topk = 128 * (tiles + extra_tiles)  # extra tiles asked for but not fitting, unless Nc >= 256
    case = Case(batch, n, heads, 4, levels, p, topk)
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(batch, n, heads, 4, generator=gen) for _ in range(2))
    geometry = lighthouse_geometry(n, levels, p, topk)
    assert geometry.effective_topk == case.effective_topk()
    sel = select_entries(q, k, levels=levels, pooling_factor=p, topk=topk)
    assert sel.level.shape[-1] == n // span + (levels - 1) * p * geometry.effective_topk
    keys = position_key(sel.level, sel.index, sel.refined, levels, p)
    assert torch.all(keys[..., 1:] > keys[..., :-1]), "compacted order is strictly increasing in the README §4 key"
    counts = plain_counts(sel, case)
    assert counts.max() <= levels and torch.all(counts[:, :, span - 1 :] >= 1)
