"""Property-based tests of the reference layer: invariants over random valid shapes, clear errors for invalid ones."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lighthouse.ops.lighthouse import lighthouse_geometry, naive_lighthouse_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@st.composite
def valid_cases(draw):
    levels = draw(st.integers(2, 3))
    p = draw(st.sampled_from([2, 4]))
    span = p ** (levels - 1)
    tiles = draw(st.integers(1, 2))
    n = tiles * (128 + draw(st.integers(0, 8))) * span
    topk = 128 * (tiles + draw(st.integers(0, 1)))
    return dict(
        batch=draw(st.integers(1, 2)),
        n=n,
        heads=draw(st.integers(1, 3)),
        dim=draw(st.sampled_from([4, 8])),
        levels=levels,
        p=p,
        topk=topk,
        dtype=draw(st.sampled_from(sorted(DTYPES))),
        seed=draw(st.integers(0, 2**16)),
    )


def inputs(case, requires_grad=False):
    gen = torch.Generator().manual_seed(case["seed"])
    shape = (case["batch"], case["n"], case["heads"], case["dim"])
    return [torch.randn(shape, generator=gen).to(DTYPES[case["dtype"]]).requires_grad_(requires_grad) for _ in range(3)]


def run(q, k, v, case):
    return naive_lighthouse_attention(q, k, v, levels=case["levels"], pooling_factor=case["p"], topk=case["topk"])


SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(valid_cases())
def test_valid_inputs_keep_invariants(case):
    q, k, v = inputs(case, requires_grad=True)
    out = run(q, k, v, case)
    assert out.shape == q.shape and out.dtype == q.dtype and torch.isfinite(out).all()
    out.float().square().mean().backward()
    for name, t in zip("qkv", (q, k, v), strict=True):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


@SETTINGS
@given(valid_cases(), st.data())
def test_cross_tile_causality(case, data):
    geometry = lighthouse_geometry(case["n"], case["levels"], case["p"], case["topk"])
    boundary = data.draw(st.integers(1, geometry.num_tiles)) * geometry.tile_len
    q, k, v = inputs(case)
    before = run(q, k, v, case)
    for t in (q, k, v):
        t[:, boundary:] = torch.randn_like(t[:, boundary:]) * 3
    after = run(q, k, v, case)
    assert torch.equal(before[:, :boundary], after[:, :boundary])


@SETTINGS
@given(valid_cases())
def test_heads_and_batch_rows_are_independent(case):
    """B*H > 1 with different data per head: each (b, h) gives what it gives alone."""
    q, k, v = inputs({**case, "dtype": "fp32"})
    together = run(q, k, v, case)
    b, h = case["batch"] - 1, case["heads"] - 1
    alone = run(*(t[b : b + 1, :, h : h + 1] for t in (q, k, v)), case)
    torch.testing.assert_close(together[b : b + 1, :, h : h + 1], alone, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(valid_cases())
def test_non_contiguous_inputs_match_contiguous(case):
    q, k, v = inputs(case)
    # The same values stored head-major, viewed back as [B, N, H, D]: strides differ, values do not.
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not strided[0].is_contiguous() or case["heads"] == 1
    assert torch.equal(run(q, k, v, case), run(*strided, case))


@st.composite
def invalid_cases(draw):
    kind = draw(st.sampled_from(["levels", "pooling_factor", "topk", "length"]))
    levels, p, topk, n = 2, 2, 128, 1024
    if kind == "levels":
        levels = draw(st.integers(-3, 1))
    elif kind == "pooling_factor":
        p = draw(st.sampled_from([0, 1, 3, 5, 6, 12]))
    elif kind == "topk":
        topk = draw(st.integers(-256, 1000).filter(lambda x: x <= 0 or x % 128))
    else:
        n = draw(st.integers(1, 255))  # below 128 * p^(L-1) = 256
    return kind, dict(levels=levels, pooling_factor=p, topk=topk), n


@SETTINGS
@given(invalid_cases())
def test_invalid_inputs_raise_value_error_naming_the_field(case):
    kind, params, n = case
    q = torch.randn(1, n, 1, 4)
    field = "sequence length" if kind == "length" else kind
    with pytest.raises(ValueError, match=field):
        naive_lighthouse_attention(q, q, q, **params)
