"""The Triton path (``lighthouse_attention``) against the plain-PyTorch reference (``naive.py``).

What is compared, per case:
- selection: (level, index, refined) per compacted slot, equal as sequences (so the sets AND the order);
- outputs and q/k/v gradients.

Inputs are random multiples of 1/16 in [-4, 4] (``_quantized``). They are exact in bf16 and their squared
norms are exact in fp32 in any summation order, so the kernels' scores equal the reference's bit for bit
and the selections can be compared exactly; ties in the scores are common, which exercises the tie-break.
(With arbitrary floats, a score that differs in the last bit between two summation orders can flip a
near-tie, a legitimate difference that would make the outputs incomparable.)

CPU (CI): kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set by tests/conftest.py before the
first kernel import), fp32, small shapes; tolerance rtol = atol = 1e-5 (fp32 sums in a different order than
torch's). Every kernel runs there, none is skipped. GPU (``-m gpu``; skipped without CUDA by the conftest): bf16,
awkward shapes, the flash-attention rule: error against an fp32 reference at most 2x the error of the reference
run in bf16. Kernel outputs are NaN-poisoned (the conftest's ``poisoned_empty``), so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

from lighthouse.ops.lighthouse import (
    lighthouse_attention,
    lighthouse_geometry,
    naive_lighthouse_attention,
    select_entries,
    triton_select_entries,
)

pytest.importorskip("triton")  # the kernels' only extra dependency (lighthouse imports it on first call)

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _quantized(shape, dtype, device, generator) -> torch.Tensor:
    x = torch.randn(shape, generator=generator, device="cpu").mul_(16).round_().clamp_(-64, 64).div_(16)
    return x.to(device=device, dtype=dtype)


def _inputs(batch, seq_len, heads, dim, dtype, device=DEVICE, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [_quantized((batch, seq_len, heads, dim), dtype, device, gen).requires_grad_() for _ in range(3)]


def _case_id(case) -> str:
    batch, seq_len, heads, dim, levels, p, topk = case
    return f"B{batch}-N{seq_len}-H{heads}-D{dim}-L{levels}-p{p}-k{topk}"


def _case_inputs(case, dtype):
    """The layer's parameters, q, k, v and an output gradient for one ``(B, N, H, D, L, p, K)`` case."""
    batch, seq_len, heads, dim, levels, p, topk = case
    q, k, v = _inputs(batch, seq_len, heads, dim, dtype)
    grad_out = _quantized(q.shape, dtype, DEVICE, torch.Generator().manual_seed(1))
    return dict(levels=levels, pooling_factor=p, topk=topk), q, k, v, grad_out


def assert_same_selection(q, k, params, v=None) -> None:
    """The kernels' (level, index, refined) per compacted slot equal the reference's, slot by slot."""
    got, want = triton_select_entries(q, k, v, **params), select_entries(q, k, v, **params)
    for name, a, b in zip(("level", "index", "refined"), got, want, strict=True):
        assert torch.equal(a.cpu(), b.cpu()), f"selection field {name} differs"


def _forward_backward(fn, q, k, v, grad_out, **params):
    out = fn(q, k, v, **params)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return out, grads


# ---------------------------------------------------------------- CPU (interpreter) and GPU, fp32

# (B, N, H, D, L, p, K): two tiles; short sequence with fewer tiles than K asks for (and H=3); L=4 with p=2;
# p=8 (1024 children per level); a tile of 192 coarsest entries (not a power of two); odd counts of coarsest
# entries, 129 at L=2 and at L=3 (the score kernel left the last one unwritten: junk selected, outputs off by 0.5).
SMALL_CASES = [
    (1, 4096, 2, 32, 3, 4, 256),
    (2, 512, 3, 16, 2, 4, 256),
    (1, 2048, 1, 64, 4, 2, 256),
    (1, 2048, 1, 32, 2, 8, 256),
    (1, 3072, 1, 16, 3, 4, 128),
    (1, 516, 2, 16, 2, 4, 128),
    (1, 2064, 1, 16, 3, 4, 128),
]


@pytest.mark.parametrize("case", SMALL_CASES, ids=_case_id)
def test_matches_reference_fp32(case, poisoned_empty):
    params, q, k, v, grad_out = _case_inputs(case, torch.float32)
    assert_same_selection(q, k, params)

    out, grads = _forward_backward(lighthouse_attention, q, k, v, grad_out, **params)
    ref, ref_grads = _forward_backward(naive_lighthouse_attention, q, k, v, grad_out, **params)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=f"d{name} differs")


@pytest.mark.parametrize("seq_len, levels", [(516, 2), (2064, 3), (4096, 3)], ids=["Nc129-L2", "Nc129-L3", "Nc256-L3"])
def test_score_pyramids_are_written_whole_for_odd_and_even_coarse_counts(seq_len, levels, poisoned_empty):
    """Every entry of both score pyramids, against PyTorch's squared norms max-pooled (exact: quantized inputs). With
    an odd count of coarsest entries the kernel's grid left the last one unwritten (here: NaN)."""
    from lighthouse.ops.lighthouse.select import scores_launch, torch_score_pyramids

    q, k, _ = (x.detach() for x in _inputs(1, seq_len, 4, 16, torch.float32))
    k = k[:, :, :2]  # two selection heads, two query heads each
    geometry = lighthouse_geometry(seq_len, levels, 4, 128)
    for got, want in zip(scores_launch(q, k, geometry), torch_score_pyramids(q, k, geometry), strict=True):
        assert got.shape == (1, 2, geometry.total_entries) and torch.equal(got.cpu(), want.cpu())


# The named options (README §2b, §3b): (B, N, H, H_kv, D, L, p, K, scorer). Groups of 2 and 3 and one KV head
# for all; a short sequence; p=8; the dilated scorer with and without groups. Inputs are quantized as above, so
# the norm scores are exact; the dilated scores come from SDPA, the same fp32 values on both paths
# (dilated.py's views against naive.py's loop over offsets: equal on CPU, and the test demands it).
OPTION_CASES = [
    (1, 4096, 4, 2, 32, 3, 4, 256, "norm"),
    (2, 512, 3, 1, 16, 2, 4, 256, "norm"),
    (1, 2048, 6, 2, 16, 2, 8, 256, "norm"),
    (1, 4096, 4, 2, 32, 3, 4, 256, "dilated"),
    (1, 2048, 2, 2, 16, 4, 2, 256, "dilated"),
    (1, 516, 4, 2, 16, 2, 4, 128, "norm"),  # 129 coarsest entries, grouped query scores
]


def _option_id(case) -> str:
    batch, seq_len, heads, kv_heads, dim, levels, p, topk, scorer = case
    return f"B{batch}-N{seq_len}-H{heads}-Hkv{kv_heads}-D{dim}-L{levels}-p{p}-k{topk}-{scorer}"


@pytest.mark.parametrize("case", OPTION_CASES, ids=_option_id)
def test_options_match_reference_fp32(case, poisoned_empty):
    batch, seq_len, heads, kv_heads, dim, levels, p, topk, scorer = case
    gen = torch.Generator().manual_seed(0)
    q = _quantized((batch, seq_len, heads, dim), torch.float32, DEVICE, gen).requires_grad_()
    k, v = (_quantized((batch, seq_len, kv_heads, dim), torch.float32, DEVICE, gen).requires_grad_() for _ in range(2))
    grad_out = _quantized(q.shape, torch.float32, DEVICE, gen)
    params = dict(levels=levels, pooling_factor=p, topk=topk, scorer=scorer, dilation=4)
    params["selection"] = "per_kv_group" if heads != kv_heads else "paper"
    assert_same_selection(q, k, params, v)

    out, grads = _forward_backward(lighthouse_attention, q, k, v, grad_out, **params)
    ref, ref_grads = _forward_backward(naive_lighthouse_attention, q, k, v, grad_out, **params)
    assert out.shape == q.shape and [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=f"d{name} differs")


# The strictly causal selection (README §8b, ``causal=True``): the reference's selection, encoded into the kernels'
# codes and inverse map by the op select_causal, then the kernels' gather and scatter. (B, N, H, H_kv, D, L, p, K,
# scorer): the paper's layout with two tiles, groups of 2 (per_kv_group), the dilated scorer, one short tile.
CAUSAL_CASES = [
    (1, 2048, 2, 2, 16, 3, 2, 256, "norm"),
    (2, 2048, 4, 2, 16, 3, 2, 256, "norm"),
    (1, 2048, 2, 2, 16, 2, 4, 256, "dilated"),
    (1, 512, 3, 3, 16, 2, 4, 256, "norm"),
    (1, 516, 2, 2, 16, 2, 4, 128, "norm"),  # 129 coarsest entries
]


@pytest.mark.parametrize("case", CAUSAL_CASES, ids=_option_id)
def test_causal_matches_reference_fp32(case, poisoned_empty):
    batch, seq_len, heads, kv_heads, dim, levels, p, topk, scorer = case
    gen = torch.Generator().manual_seed(27)
    q = _quantized((batch, seq_len, heads, dim), torch.float32, DEVICE, gen).requires_grad_()
    k, v = (_quantized((batch, seq_len, kv_heads, dim), torch.float32, DEVICE, gen).requires_grad_() for _ in range(2))
    grad_out = _quantized(q.shape, torch.float32, DEVICE, gen)
    params = dict(levels=levels, pooling_factor=p, topk=topk, scorer=scorer, causal=True)
    params["selection"] = "paper" if heads == kv_heads else "per_kv_group"
    assert_same_selection(q, k, params, v)

    out, grads = _forward_backward(lighthouse_attention, q, k, v, grad_out, **params)
    ref, ref_grads = _forward_backward(naive_lighthouse_attention, q, k, v, grad_out, **params)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=f"d{name} differs")


# The causal selection's kernels on given scores, against the reference fed the same scores: integers below 20-1000,
# so ties are common (the rule's counts and fills decide them), and up to 8 tiles, so a tile's cutoffs and B stream
# reach into a previous tile whose own A depends on the tile before it. (B, H, N, L, p, K, largest score).
CAUSAL_SCORE_CASES = [
    (1, 2, 4096, 3, 4, 256, 20),
    (2, 1, 2048, 2, 4, 256, 50),
    (1, 1, 4096, 2, 2, 512, 50),
    (1, 1, 24576, 3, 4, 768, 100),
    (2, 1, 8192, 3, 2, 1024, 50),
    (1, 1, 2048, 2, 8, 256, 1000),
]


@pytest.mark.parametrize("case", CAUSAL_SCORE_CASES, ids=lambda c: "B{}-H{}-N{}-L{}-p{}-k{}-max{}".format(*c))
def test_causal_selection_kernel_matches_reference_on_tied_scores(case):
    from lighthouse.ops.lighthouse.common import decode_codes
    from lighthouse.ops.lighthouse.geometry import level_sizes
    from lighthouse.ops.lighthouse.naive import level_offsets, select_from_scores
    from lighthouse.ops.lighthouse.select_causal import select_causal_launch

    batch, heads, seq_len, levels, p, topk, largest = case
    geometry = lighthouse_geometry(seq_len, levels, p, topk)
    gen = torch.Generator().manual_seed(seq_len + largest)
    sizes = level_sizes(seq_len, levels, p)
    score_q, score_k = (
        [torch.randint(0, largest, (batch, heads, n), generator=gen).float() for n in sizes] for _ in "qk"
    )
    want = select_from_scores(score_q, score_k, geometry, causal=True)
    pyramids = [torch.cat(s, dim=-1).to(DEVICE) for s in (score_q, score_k)]
    codes, inv = select_causal_launch(*pyramids, geometry)
    for name, a, b in zip(("level", "index", "refined"), decode_codes(codes), want, strict=True):
        assert torch.equal(a.cpu(), b), f"selection field {name} differs"
    slots = torch.arange(geometry.selected_len).expand(batch, heads, -1)
    assert torch.equal(inv.cpu().long().gather(-1, level_offsets(sizes, "cpu")[want.level] + want.index), slots)


def test_per_kv_group_gathers_kv_once_per_kv_head():
    """The point of per_kv_group: the compacted K and V (and everything kept for the backward of the layer) have
    H_kv heads, not H; only the compacted q and output have H. Nothing N rows long is kept."""
    batch, seq_len, heads, kv_heads, dim = 1, 4096, 4, 1, 32
    params = dict(levels=3, pooling_factor=4, topk=256, selection="per_kv_group")
    # bf16 on CUDA, as in training: for fp32 with enable_gqa, CUDA's SDPA falls back to its math kernel, which
    # expands K and V to H heads itself (measured on the H200, 2026-12-02), so fp32 there tests SDPA, not this op.
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    q = _quantized((batch, seq_len, heads, dim), dtype, DEVICE, gen).requires_grad_()
    k, v = (_quantized((batch, seq_len, kv_heads, dim), dtype, DEVICE, gen).requires_grad_() for _ in range(2))
    s_sel = lighthouse_geometry(seq_len, 3, 4, 256).selected_len
    saved = _saved_for_backward(lambda *x: lighthouse_attention(*x, **params), q, k, v)
    floats = {x.untyped_storage().data_ptr(): x for x in saved if x.is_floating_point()}.values()
    assert all(seq_len not in x.shape for x in floats)
    kv_rows = [x for x in floats if x.dim() == 4 and x.shape[1] == kv_heads and x.shape[2] == s_sel]
    assert len(kv_rows) >= 2, [x.shape for x in floats]  # the compacted K and V, head-major views for SDPA
    # q, the output and the log-sum-exp at H heads, K and V at H_kv: less than the per-head path's 4 H + 1 rows.
    budget = ((2 * dim + 1) * heads + 2 * dim * kv_heads) * batch * s_sel * 4
    assert sum(x.numel() * x.element_size() for x in floats) <= budget


def test_cpu_without_interpreter_names_the_naive_backend(monkeypatch):
    q, k, v = (x.detach().cpu() for x in _inputs(1, 512, 1, 16, torch.float32, device="cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="lighthouse_naive"):
        lighthouse_attention(q, k, v, levels=2, pooling_factor=4, topk=128)


@pytest.mark.parametrize("layer", [naive_lighthouse_attention, lighthouse_attention], ids=["naive", "triton"])
@pytest.mark.parametrize("shape", [(0, 512, 2, 8), (1, 512, 0, 8), (1, 512, 2, 0)], ids=["B0", "H0", "D0"])
def test_empty_dimensions_are_refused_by_name(layer, shape):
    """Were an IndexError (B=0) or a ZeroDivisionError (H=0, D=0) from inside a kernel launch."""
    q = torch.zeros(shape, device=DEVICE)
    with pytest.raises(ValueError, match=r"q must be \[B, N, H, D\] with every size >= 1"):
        layer(q, q, q, levels=2, pooling_factor=4, topk=128)


def test_too_short_sequence_is_rejected():
    q, k, v = (x.detach() for x in _inputs(1, 256, 1, 16, torch.float32))
    with pytest.raises(ValueError, match=">= 128"):
        lighthouse_attention(q, k, v, levels=2, pooling_factor=4, topk=128)


@pytest.mark.parametrize("layer", [naive_lighthouse_attention, lighthouse_attention], ids=["naive", "triton"])
def test_inputs_and_geometry_are_validated_once_per_call(layer, monkeypatch):
    from lighthouse.ops.lighthouse import geometry

    calls = {"check_inputs": 0, "lighthouse_geometry": 0}
    for name in calls:
        original = getattr(geometry, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(geometry, name, counted)
    q, k, v = (x.detach() for x in _inputs(1, 512, 1, 16, torch.float32))
    layer(q, k, v, levels=2, pooling_factor=4, topk=128)
    assert calls == {"check_inputs": 1, "lighthouse_geometry": 1}


def _saved_for_backward(fn, *inputs) -> list[torch.Tensor]:
    """Every tensor autograd keeps between ``fn``'s forward and its backward."""
    saved = []

    def pack(x):
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn(*inputs)
    return saved


def test_keeps_only_compacted_tensors_for_backward():
    """The layer's memory design: after the forward it holds the S_sel compacted rows SDPA needs and the
    int32 selection, never q, k, v or anything else N rows long in the float dtype. (Dense SDPA keeps q, k,
    v and its output; inside a model that is what makes the layer's activation memory smaller than dense.)"""
    batch, seq_len, heads, dim = 1, 4096, 2, 32
    params = dict(levels=3, pooling_factor=4, topk=256)
    q, k, v = _inputs(batch, seq_len, heads, dim, torch.float32)
    s_sel = lighthouse_geometry(seq_len, **params).selected_len

    saved = _saved_for_backward(lambda *x: lighthouse_attention(*x, **params), q, k, v)
    floats = [x for x in saved if x.is_floating_point()]
    inputs = {x.untyped_storage().data_ptr() for x in (q, k, v)}
    assert not inputs & {x.untyped_storage().data_ptr() for x in saved}, "q, k or v is kept for backward"
    assert floats and all(s_sel in x.shape and seq_len not in x.shape for x in floats), [x.shape for x in floats]
    # Integers: the int32 selection, and on CUDA the SDPA backend's RNG seed and offset (one element each).
    assert all(x.dtype == torch.int32 or x.numel() <= 1 for x in saved if not x.is_floating_point())
    # q, k, v and the output, compacted, plus SDPA's fp32 log-sum-exp per row and head.
    budget = (4 * dim + 1) * batch * heads * s_sel * 4
    by_storage = {x.untyped_storage().data_ptr(): x for x in floats}
    assert sum(x.numel() * x.element_size() for x in by_storage.values()) <= budget


class _TinyAttention(torch.nn.Module):
    """Projections + Lighthouse, the shape of a real attention layer, for whole-graph compilation."""

    def __init__(self, heads: int, dim: int, **params):
        super().__init__()
        self.heads, self.dim, self.params = heads, dim, params
        self.qkv = torch.nn.Linear(heads * dim, 3 * heads * dim, bias=False)
        self.out = torch.nn.Linear(heads * dim, heads * dim, bias=False)

    def forward(self, x):
        batch, seq_len, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq_len, 3, self.heads, self.dim).unbind(2)
        y = lighthouse_attention(q, k, v, **self.params)
        return self.out(y.reshape(batch, seq_len, -1))


def test_torch_compile_fullgraph():
    """The kernels are torch.library ops with fake implementations: the whole module compiles without graph
    breaks and matches eager, forward and backward. CPU uses the aot_eager backend (it checks the
    capture, fake shapes and autograd without needing a C++ toolchain); GPU uses inductor."""
    torch.manual_seed(0)
    heads, dim = 2, 16
    module = _TinyAttention(heads, dim, levels=2, pooling_factor=4, topk=128).to(DEVICE)
    x = (torch.randn(1, 512, heads * dim, device=DEVICE) / 4).requires_grad_()
    compiled = torch.compile(module, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    want = module(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    got = compiled(x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph_per_kv_group_dilated():
    """The options through the ops' fake implementations (KV-head-sized selection, gather and gather_bwd outputs,
    the dilated scores' SDPA and select_scored): one graph, equal to eager forward and backward."""

    def layer(q, k, v):
        return lighthouse_attention(
            q, k, v, levels=2, pooling_factor=4, topk=128, selection="per_kv_group", scorer="dilated"
        )

    gen = torch.Generator().manual_seed(0)
    q = _quantized((1, 512, 4, 16), torch.float32, DEVICE, gen).requires_grad_()
    k, v = (_quantized((1, 512, 2, 16), torch.float32, DEVICE, gen).requires_grad_() for _ in range(2))
    grad_out = _quantized(q.shape, torch.float32, DEVICE, gen)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    got, got_grads = _forward_backward(compiled, q, k, v, grad_out)
    want, want_grads = _forward_backward(layer, q, k, v, grad_out)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_torch_compile_fullgraph_causal():
    """The causal selection is an op with a fake implementation like the kernels: one graph, equal to eager."""

    def layer(q, k, v):
        return lighthouse_attention(q, k, v, levels=2, pooling_factor=4, topk=128, causal=True)

    gen = torch.Generator().manual_seed(28)
    q, k, v = (_quantized((1, 512, 2, 16), torch.float32, DEVICE, gen).requires_grad_() for _ in range(3))
    grad_out = _quantized(q.shape, torch.float32, DEVICE, gen)
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    got, got_grads = _forward_backward(compiled, q, k, v, grad_out)
    want, want_grads = _forward_backward(layer, q, k, v, grad_out)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_torch_compile_dynamic_lengths_trace_once():
    """The fake implementations size their outputs with geometry.py's formulas, which hold for symbolic lengths:
    under ``dynamic=True`` two lengths with different ``S_sel`` (640 and 768) share one compiled graph, and both
    match eager, forward and backward."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def layer(q, k, v):
        return lighthouse_attention(q, k, v, levels=2, pooling_factor=4, topk=128)

    counter = CompileCounterWithBackend("inductor" if HAS_CUDA else "aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    for seq_len in (512, 1024):
        q, k, v = _inputs(1, seq_len, 1, 16, torch.float32)
        grad_out = _quantized(q.shape, torch.float32, DEVICE, torch.Generator().manual_seed(1))
        got, got_grads = _forward_backward(compiled, q, k, v, grad_out)
        want, want_grads = _forward_backward(layer, q, k, v, grad_out)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1, "a second length recompiled: a size formula specialised on N"


# ---------------------------------------------------------------- GPU only: bf16, awkward shapes, determinism

# D 64 and 128; L 2/3/4; p 2/4/8; K 128..2048; B > 1; H = 3; a non-power-of-two tile (Nc = 192); a short
# sequence (3 tiles instead of 16); the paper's setting at its smallest N; a coarsest span of 512 rows.
GPU_CASES = [
    (2, 8192, 3, 64, 3, 4, 512),
    (2, 4096, 3, 128, 2, 8, 128),
    (1, 16384, 2, 128, 4, 2, 1024),
    (2, 6144, 3, 64, 3, 4, 2048),
    (1, 49152, 2, 64, 3, 4, 2048),
    (1, 32768, 4, 128, 3, 4, 2048),
    (1, 65536, 1, 128, 4, 8, 128),
]


def _max_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return (x.float() - ref.float()).abs().max().item()


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=_case_id)
def test_matches_reference_bf16_flash_rule(case, poisoned_empty):
    params, q, k, v, grad_out = _case_inputs(case, torch.bfloat16)
    assert_same_selection(q, k, params)

    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref, ref_grads = _forward_backward(naive_lighthouse_attention, q32, k32, v32, grad_out.float(), **params)
    low, low_grads = _forward_backward(naive_lighthouse_attention, q, k, v, grad_out, **params)
    out, grads = _forward_backward(lighthouse_attention, q, k, v, grad_out, **params)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    # flash-attention's rule; the 1e-6 floor only matters where the bf16 reference is exact.
    assert _max_err(out, ref) <= 2 * _max_err(low, ref) + 1e-6
    for name, g, g_low, g_ref in zip("qkv", grads, low_grads, ref_grads, strict=True):
        assert _max_err(g, g_ref) <= 2 * _max_err(g_low, g_ref) + 1e-6, f"d{name}"


# Long sequences with few tiles: one tile owns 8192 coarsest entries (N = 131072, K = 128: the causal selection's
# launch asked for 64 warps, more than a CUDA block holds) or 32768 (N = 524288: the paper selection's did).
WIDE_TILE_CASES = [(131072, False), (131072, True), (524288, False)]


@pytest.mark.gpu
@pytest.mark.parametrize("seq_len, causal", WIDE_TILE_CASES, ids=lambda v: str(v))
def test_selection_with_wide_tiles_matches_reference(seq_len, causal):
    params = dict(levels=3, pooling_factor=4, topk=128, causal=causal)
    assert lighthouse_geometry(seq_len, 3, 4, 128).coarse_per_tile == seq_len // 16
    q, k, _ = _inputs(1, seq_len, 1, 16, torch.bfloat16)
    assert_same_selection(q, k, params)


@pytest.mark.gpu
def test_bitwise_deterministic():
    """Our kernels have no atomics: two runs give identical bits. With torch's deterministic algorithms on,
    the SDPA backward is deterministic too, so the whole forward+backward is."""
    params = dict(levels=3, pooling_factor=4, topk=2048)
    q, k, v = _inputs(1, 32768, 3, 128, torch.bfloat16)
    grad_out = torch.randn_like(q)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = _forward_backward(lighthouse_attention, q, k, v, grad_out, **params)
        second = _forward_backward(lighthouse_attention, q, k, v, grad_out, **params)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1], strict=True):
        assert torch.equal(a, b)
