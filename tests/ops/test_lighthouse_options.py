"""The reference's two named options (README §2b, §3b): the ``per_kv_group`` selection and the ``dilated`` scorer.

Each is checked against something written independently of naive.py's code for it: the per-head path run on
repeated K/V with the group's selection (what SDPA's ``enable_gqa`` means), the paper's selection of the row with
the group's largest norm, and plain fp64 loops over dilation offsets with explicit masks. The default path is
pinned by test_lighthouse_naive.py; here only that ``per_kv_group`` with one query head per KV head is it, bit for
bit. Tolerances: fp32 against fp64 loops 1e-5; gradcheck in fp64.
"""

from __future__ import annotations

import math

import pytest
import torch

from lighthouse.ops.lighthouse import naive_lighthouse_attention, select_entries
from lighthouse.ops.lighthouse.dilated import dilated_scores
from lighthouse.ops.lighthouse.geometry import Selection, lighthouse_geometry
from lighthouse.ops.lighthouse.naive import (
    dilated_base_scores,
    lighthouse_from_selection,
    pool_scores,
    select_from_scores,
)

PARAMS = dict(levels=3, pooling_factor=4, topk=256)  # N = 4096: 2 tiles


def _qkv(batch, seq_len, heads, kv_heads, dim, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, seq_len, heads, dim, generator=gen)
    k, v = (torch.randn(batch, seq_len, kv_heads, dim, generator=gen) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _repeat(x: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    return x.repeat_interleave(groups, dim=dim)


def _emitted(sel: Selection, b: int, h: int) -> set:
    return set(zip(sel.level[b, h].tolist(), sel.index[b, h].tolist(), sel.refined[b, h].tolist(), strict=True))


# ---------------------------------------------------------------- per_kv_group (README §3b)


def test_per_kv_group_with_one_query_head_per_kv_head_is_the_paper_path():
    q, k, v = _qkv(2, 4096, 3, 3, 16, seed=1)
    for scorer in ("norm", "dilated"):
        opts = dict(PARAMS, scorer=scorer)
        want = naive_lighthouse_attention(q, k, v, **opts)
        assert torch.equal(naive_lighthouse_attention(q, k, v, selection="per_kv_group", **opts), want)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (3, 1), (8, 2)])
def test_per_kv_group_selects_like_the_paper_on_the_groups_loudest_query_rows(heads, kv_heads):
    """The group's query score is the max of its heads' norms: the paper's selection on one head whose row at
    every position is the group's query row of largest norm must be the same selection."""
    q, k, v = _qkv(2, 4096, heads, kv_heads, 8, seed=2)
    groups = heads // kv_heads
    grouped = q.view(2, 4096, kv_heads, groups, 8)
    loudest = grouped.norm(dim=-1).argmax(dim=-1)  # [B, N, H_kv]
    q_loud = grouped.gather(3, loudest[..., None, None].expand(-1, -1, -1, 1, 8)).squeeze(3)  # [B, N, H_kv, D]
    got = select_entries(q, k, selection="per_kv_group", **PARAMS)
    want = select_entries(q_loud, k, **PARAMS)
    assert got.level.shape[:2] == (2, kv_heads)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scorer", ["norm", "dilated"])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (6, 2), (2, 1)])
def test_per_kv_group_is_the_per_head_layer_on_repeated_kv_with_the_groups_selection(heads, kv_heads, scorer):
    """Outputs and q/k/v gradients equal the per-head machinery run on K/V repeated to the query heads, every
    query head using its KV head's selection (dK, dV are then the group sums of the repeated path's)."""
    q, k, v = (x.requires_grad_() for x in _qkv(1, 4096, heads, kv_heads, 16, seed=3))
    groups = heads // kv_heads
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(4))
    opts = dict(PARAMS, selection="per_kv_group", scorer=scorer)
    out = naive_lighthouse_attention(q, k, v, **opts)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    sel = select_entries(q, k, v, **opts)
    per_query_head = Selection(*(_repeat(field, groups, 1) for field in sel))
    want = lighthouse_from_selection(
        q, _repeat(k, groups, 2), _repeat(v, groups, 2), per_query_head, levels=3, pooling_factor=4
    )
    want_grads = torch.autograd.grad(want, (q, k, v), grad_out)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=f"d{name}")


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 1), (4, 2)])
def test_per_kv_group_gradcheck_fixed_selection(heads, kv_heads):
    q, k, v = (x.double().requires_grad_() for x in _qkv(1, 512, heads, kv_heads, 3, seed=5))
    sel = select_entries(q, k, levels=3, pooling_factor=2, topk=128, selection="per_kv_group")

    def layer(q, k, v):
        return lighthouse_from_selection(q, k, v, sel, levels=3, pooling_factor=2)

    assert torch.autograd.gradcheck(layer, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("scorer", ["norm", "dilated"])
def test_options_gradients_finite_and_nonzero_and_selection_has_none(scorer):
    q, k, v = (x.requires_grad_() for x in _qkv(2, 4096, 4, 2, 16, seed=6))
    opts = dict(PARAMS, selection="per_kv_group", scorer=scorer)
    out = naive_lighthouse_attention(q, k, v, **opts)
    out.backward(torch.randn_like(out))
    for name, x in zip("qkv", (q, k, v), strict=True):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name
    assert not any(field.requires_grad for field in select_entries(q, k, v, **opts))


@pytest.mark.parametrize(
    "opts",
    [dict(selection="per_kv_group"), dict(scorer="dilated"), dict(selection="per_kv_group", scorer="dilated")],
    ids=["per_kv_group", "dilated", "both"],
)
def test_options_keep_strict_causality_across_tiles(opts):
    heads, kv_heads = (4, 2) if opts.get("selection") else (2, 2)
    q, k, v = _qkv(1, 4096, heads, kv_heads, 16, seed=7)
    out = naive_lighthouse_attention(q, k, v, **PARAMS, **opts)
    t = 2048  # the tile boundary
    gen = torch.Generator().manual_seed(8)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, t:] = 10 * torch.randn(x[:, t:].shape, generator=gen)
    out2 = naive_lighthouse_attention(q2, k2, v2, **PARAMS, **opts)
    assert torch.equal(out[:, :t], out2[:, :t])
    assert not torch.equal(out[:, t:], out2[:, t:])


@pytest.mark.parametrize(
    ("kv_shape", "opts", "match"),
    [
        pytest.param((1, 512, 3, 4), dict(selection="per_kv_group"), r"H_kv dividing H", id="kv3-of-4"),
        pytest.param((1, 512, 2, 8), dict(selection="per_kv_group"), r"H_kv dividing H", id="kv-dim-differs"),
        pytest.param((1, 512, 2, 4), dict(), r"same shape", id="gqa-shapes-need-the-option"),
        pytest.param((1, 512, 4, 4), dict(selection="per_group"), r"selection='per_group' is not one of", id="sel"),
        pytest.param((1, 512, 4, 4), dict(scorer="attention"), r"scorer='attention' is not one of", id="scorer"),
        pytest.param((1, 512, 4, 4), dict(scorer="dilated", dilation=0), r"dilation=0 is invalid: .*>= 1", id="d0"),
        pytest.param((1, 512, 4, 4), dict(scorer="dilated", dilation=3), r"dilation=3 must divide .* 512", id="d3"),
    ],
)
def test_invalid_options_and_shapes_name_the_field(kv_shape, opts, match):
    q, kv = torch.zeros(1, 512, 4, 4), torch.zeros(kv_shape)
    with pytest.raises(ValueError, match=match):
        naive_lighthouse_attention(q, kv, kv, levels=2, pooling_factor=4, topk=128, **opts)


def test_dilated_selection_needs_v():
    q = torch.zeros(1, 512, 1, 4)
    with pytest.raises(ValueError, match="needs v"):
        select_entries(q, q, levels=2, pooling_factor=4, topk=128, scorer="dilated")


# ---------------------------------------------------------------- the dilated scorer (README §2b)


def plain_dilated_scores(q, k, v, dilation):
    """README §2b in fp64 loops: per query head h (KV head h // groups) and offset r, causal softmax attention on
    positions r, r + dilation, ... with an explicit mask, once as attn(q, k, v) and once as attn(k, q, v); the
    row norms, then the max over each KV head's query heads. Returns ``[B, H_kv, N]`` twice."""
    batch, seq_len, heads, dim = q.shape
    kv_heads = k.shape[2]
    groups = heads // kv_heads
    s_q = torch.zeros(batch, heads, seq_len, dtype=torch.float64)
    s_k = torch.zeros_like(s_q)

    def attend(a, b, c):
        logits = a @ b.T / math.sqrt(dim)
        logits = logits.masked_fill(torch.ones_like(logits, dtype=torch.bool).triu(1), -math.inf)
        return logits.softmax(dim=-1) @ c

    for n in range(batch):
        for h in range(heads):
            for r in range(dilation):
                qs, ks, vs = (
                    q[n, r::dilation, h].double(),
                    k[n, r::dilation, h // groups].double(),
                    v[n, r::dilation, h // groups].double(),
                )
                s_q[n, h, r::dilation] = attend(qs, ks, vs).norm(dim=-1)
                s_k[n, h, r::dilation] = attend(ks, qs, vs).norm(dim=-1)
    fold = lambda s: s.view(batch, kv_heads, groups, seq_len).amax(dim=2)  # noqa: E731
    return fold(s_q), fold(s_k)


@pytest.mark.parametrize("dilation", [1, 2, 4, 8])
@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2), (3, 1)])
def test_dilated_scores_match_a_plain_loop_over_offsets(heads, kv_heads, dilation):
    q, k, v = _qkv(2, 256, heads, kv_heads, 8, seed=9)
    want_q, want_k = plain_dilated_scores(q, k, v, dilation)
    # The fast path (dilated.py: one SDPA over the offsets as heads, strided views for the groups).
    got_q, got_k = dilated_scores(q, k, v, dilation)
    assert got_q.dtype == got_k.dtype == torch.float32 and got_q.shape == (2, kv_heads, 256)
    torch.testing.assert_close(got_q.double(), want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k.double(), want_k, rtol=1e-5, atol=1e-5)
    # The reference (naive.py: a loop over offsets on K/V expanded to the query heads), per query head.
    groups = heads // kv_heads
    ref_q, ref_k = dilated_base_scores(
        *(x.transpose(1, 2) for x in (q, _repeat(k, groups, 2), _repeat(v, groups, 2))), dilation
    )
    for ref, want in ((ref_q, want_q), (ref_k, want_k)):
        torch.testing.assert_close(ref.view(2, kv_heads, groups, 256).amax(2).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("heads", "kv_heads", "selection"), [(2, 2, "paper"), (4, 2, "per_kv_group")])
def test_dilated_selection_sets_from_the_plain_scores(heads, kv_heads, selection):
    """The selection sets equal README §3 run on the plain loop's scores, max-pooled up the levels (written out
    here as a loop over spans); each (batch, head) emits S_sel distinct entries."""
    q, k, v = _qkv(2, 4096, heads, kv_heads, 16, seed=10)
    got = select_entries(q, k, v, selection=selection, scorer="dilated", dilation=4, **PARAMS)
    base_q, base_k = (s.float() for s in plain_dilated_scores(q, k, v, 4))

    def pyramid(base):
        levels = [base]
        for level in (2, 3):
            span = 4 ** (level - 1)
            levels.append(torch.stack([base[..., i : i + span].amax(-1) for i in range(0, 4096, span)], dim=-1))
        return levels

    pyr_q, pyr_k = pyramid(base_q), pyramid(base_k)
    for plain, pooled in ((pyr_q, pool_scores(base_q, 3, 4)), (pyr_k, pool_scores(base_k, 3, 4))):
        assert all(torch.equal(a, b) for a, b in zip(plain, pooled, strict=True))
    want = select_from_scores(pyr_q, pyr_k, lighthouse_geometry(4096, **PARAMS))
    s_sel = lighthouse_geometry(4096, **PARAMS).selected_len
    for b in range(2):
        for h in range(kv_heads):
            assert _emitted(got, b, h) == _emitted(want, b, h), f"b={b} h={h}"
            assert len(_emitted(got, b, h)) == s_sel
    # And it is a different selection from the norm scorer's (the option does something).
    assert not torch.equal(got.index, select_entries(q, k, v, selection=selection, **PARAMS).index)


def test_dilated_scorer_carries_no_gradient():
    q, k, v = (x.requires_grad_() for x in _qkv(1, 256, 2, 2, 8, seed=11))
    for s in dilated_scores(q, k, v, 4) + dilated_base_scores(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), 4
    ):
        assert not s.requires_grad


def test_dilated_scores_ignore_other_offsets():
    """Offset r's scores read only positions r, r + delta, ...: changing the other offsets leaves them bitwise
    unchanged (the subsequences do not see each other)."""
    q, k, v = _qkv(1, 256, 4, 2, 8, seed=12)
    before = dilated_scores(q, k, v, 4)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, 1::4] = torch.randn(x[:, 1::4].shape, generator=torch.Generator().manual_seed(13))
    after = dilated_scores(q2, k2, v2, 4)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a[..., 0::4], b[..., 0::4]) and not torch.equal(a[..., 1::4], b[..., 1::4])
