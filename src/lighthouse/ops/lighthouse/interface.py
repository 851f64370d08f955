"""Lighthouse Attention on the GPU: Triton selection, gather and scatter around PyTorch's causal SDPA (the strictly
causal selection of README §8b is the reference's PyTorch code, wrapped as an op like the kernels).

Layers: kernels (select.py, gather.py, scatter.py) -> launchers -> ``torch.library`` ops with fake
implementations and autograd formulas (this file) -> ``lighthouse_attention``, the documented functional.
Registering the kernels as ops lets ``torch.compile(fullgraph=True)`` trace a whole model through them;
the SDPA in the middle stays an ordinary torch call, so its backend (cuDNN or Flash) and its backward are
PyTorch's own.

Determinism: none of the kernels uses atomics; every output element is written once, summed in a fixed
order in fp32, so selection, gather and scatter are bitwise reproducible, always (there is no separate
mode and nothing to pay). Whether a whole forward+backward is bitwise reproducible then only depends on
the SDPA backward: under ``torch.use_deterministic_algorithms(True)`` PyTorch uses its deterministic Flash
backward (and never cuDNN); see bench/RESULTS.md for what that costs.

Validation happens once per call, in the functionals (``checked_geometry``); the ops trust their parameters and
derive every size from ``LighthouseGeometry`` / ``geometry.total_entries``, which also work on SymInts.

The kernel modules are imported inside the ops, on first use, so ``TRITON_INTERPRET=1`` (CPU tests) only has to
be set before the first call, not before ``import lighthouse``.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import LayerOptions, LighthouseGeometry, Selection, checked_geometry


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(x: Tensor) -> None:
    if x.is_cuda:
        return
    if not _interpreting():
        raise RuntimeError(
            "lighthouse_attention runs Triton kernels and needs CUDA tensors; got a tensor on "
            f"'{x.device}'. On CPU use the attention backend 'lighthouse_naive' "
            "(naive_lighthouse_attention). (Tests may run the kernels in Triton's interpreter by setting "
            "TRITON_INTERPRET=1 before the first call.)"
        )
    from .select import _select_kernel

    if type(_select_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after the Lighthouse kernels were first imported; "
            "set it before the first call to lighthouse_attention"
        )


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# ---------------------------------------------------------------- selection (no gradient)


@torch.library.custom_op("lighthouse::select", mutates_args=())
def _select_op(q: Tensor, k: Tensor, levels: int, pooling_factor: int, topk: int) -> tuple[Tensor, Tensor]:
    """``q [B, N, H, D]``, ``k [B, N, H_s, D]`` -> ``codes [B, H_s, S_sel]`` int32, ``inv [B, H_s, N_tot]`` int32
    (common.py): one selection per head of k (``H_s = H``: the paper's; fewer: per_kv_group)."""
    _check_device(q)
    from .select import select_launch

    geometry = LighthouseGeometry(q.shape[1], levels, pooling_factor, topk)
    return select_launch(_last_dim_contiguous(q), _last_dim_contiguous(k), geometry)


def _fake_codes(like: Tensor, batch, heads, seq_len, levels: int, pooling_factor: int, topk: int):
    """Every selection op's outputs as fakes: ``codes [B, H_s, S_sel]``, ``inv [B, H_s, N_tot]``, int32."""
    geometry = LighthouseGeometry(seq_len, levels, pooling_factor, topk)
    codes = like.new_empty(batch, heads, geometry.selected_len, dtype=torch.int32)
    return codes, like.new_empty(batch, heads, geometry.total_entries, dtype=torch.int32)


@_select_op.register_fake
def _(q, k, levels, pooling_factor, topk):
    batch, seq_len, heads, _ = k.shape
    return _fake_codes(q, batch, heads, seq_len, levels, pooling_factor, topk)


@torch.library.custom_op("lighthouse::select_scored", mutates_args=())
def _select_scored_op(
    score_q: Tensor, score_k: Tensor, levels: int, pooling_factor: int, topk: int
) -> tuple[Tensor, Tensor]:
    """Given base scores ``[B, H_s, N]`` fp32 (>= 0; the dilated scorer's) -> ``codes``, ``inv`` as ``select``."""
    _check_device(score_q)
    from .naive import score_pyramids
    from .select import check_code_range, select_from_scores_launch

    geometry = LighthouseGeometry(score_q.shape[2], levels, pooling_factor, topk)
    check_code_range(geometry)
    return select_from_scores_launch(*score_pyramids(score_q, score_k, levels, pooling_factor), geometry)


@_select_scored_op.register_fake
def _(score_q, score_k, levels, pooling_factor, topk):
    batch, heads, seq_len = score_q.shape
    return _fake_codes(score_q, batch, heads, seq_len, levels, pooling_factor, topk)


@torch.library.custom_op("lighthouse::select_causal", mutates_args=())
def _select_causal_op(
    q: Tensor, k: Tensor, v: Tensor | None, levels: int, pooling_factor: int, topk: int, scorer: str, dilation: int
) -> tuple[Tensor, Tensor]:
    """README §8b's strictly causal selection -> ``codes``, ``inv`` as ``select``: the score pyramids of the layer's
    scorer (the norm kernel, or the dilated scores max-pooled up the levels), then select_causal.py's kernels.
    ``v``: the dilated scorer's only."""
    _check_device(q)
    from .select import check_code_range, scores_launch
    from .select_causal import select_causal_launch

    geometry = LighthouseGeometry(q.shape[1], levels, pooling_factor, topk)
    check_code_range(geometry)
    if scorer == "norm":
        pyramids = scores_launch(_last_dim_contiguous(q), _last_dim_contiguous(k), geometry)
    else:
        from .dilated import dilated_scores
        from .naive import score_pyramids

        pyramids = score_pyramids(*dilated_scores(q, k, v, dilation), levels, pooling_factor)
    return select_causal_launch(*pyramids, geometry)


@_select_causal_op.register_fake
def _(q, k, v, levels, pooling_factor, topk, scorer, dilation):
    batch, seq_len, heads, _ = k.shape
    return _fake_codes(q, batch, heads, seq_len, levels, pooling_factor, topk)


# ---------------------------------------------------------------- gather (pool + pick) and its backward


@torch.library.custom_op("lighthouse::gather", mutates_args=())
def _gather_op(
    q: Tensor, k: Tensor, v: Tensor, codes: Tensor, inv: Tensor, levels: int, pooling_factor: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``q [B, N, H, D]``, ``k, v [B, N, H_s, D]`` -> ``[B, S_sel, H, D]``, 2 x ``[B, S_sel, H_s, D]``: the (pooled)
    rows of the emitted entries; K and V once per selection head."""
    from .gather import gather_fwd_launch

    if q.shape == k.shape:
        if not (q.stride() == k.stride() == v.stride() and q.stride(-1) == 1):
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    else:
        q = _last_dim_contiguous(q)
        if not (k.stride() == v.stride() and k.stride(-1) == 1):
            k, v = k.contiguous(), v.contiguous()
    return gather_fwd_launch(q, k, v, inv, levels, pooling_factor, codes.shape[-1])


@_gather_op.register_fake
def _(q, k, v, codes, inv, levels, pooling_factor):
    return tuple(x.new_empty(x.shape[0], codes.shape[-1], x.shape[2], x.shape[3]) for x in (q, k, v))


@torch.library.custom_op("lighthouse::gather_bwd", mutates_args=())
def _gather_bwd_op(
    dq_sel: Tensor,
    dk_sel: Tensor,
    dv_sel: Tensor,
    inv: Tensor,
    seq_len: int,
    levels: int,
    pooling_factor: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, S_sel, H, D]``, 2 x ``[B, S_sel, H_s, D]`` -> dq ``[B, N, H, D]``, dk, dv ``[B, N, H_s, D]``."""
    from .gather import gather_bwd_launch

    grads = tuple(_last_dim_contiguous(g) for g in (dq_sel, dk_sel, dv_sel))
    return gather_bwd_launch(grads, inv, seq_len, levels, pooling_factor)


@_gather_bwd_op.register_fake
def _(dq_sel, dk_sel, dv_sel, inv, seq_len, levels, pooling_factor):
    return tuple(g.new_empty(g.shape[0], seq_len, g.shape[2], g.shape[3]) for g in (dq_sel, dk_sel, dv_sel))


def _gather_setup(ctx, inputs, output):
    q, _, _, _, inv, levels, pooling_factor = inputs
    ctx.save_for_backward(inv)
    ctx.meta = (q.shape[1], levels, pooling_factor)
    ctx.heads = (q.shape[2], inputs[1].shape[2])  # a missing gradient is zeros of its output's shape


def _gather_backward(ctx, dq_sel, dk_sel, dv_sel):
    (inv,) = ctx.saved_tensors
    seq_len, levels, pooling_factor = ctx.meta
    present = next(g for g in (dq_sel, dk_sel, dv_sel) if g is not None)
    batch, selected_len, _, dim = present.shape
    dq_sel, dk_sel, dv_sel = (
        present.new_zeros(batch, selected_len, heads, dim) if g is None else g
        for g, heads in zip((dq_sel, dk_sel, dv_sel), (ctx.heads[0], ctx.heads[1], ctx.heads[1]), strict=True)
    )
    dq, dk, dv = torch.ops.lighthouse.gather_bwd(dq_sel, dk_sel, dv_sel, inv, seq_len, levels, pooling_factor)
    return dq, dk, dv, None, None, None, None


_gather_op.register_autograd(_gather_backward, setup_context=_gather_setup)


# ---------------------------------------------------------------- scatter back and its backward


@torch.library.custom_op("lighthouse::scatter", mutates_args=())
def _scatter_op(o_sel: Tensor, inv: Tensor, codes: Tensor, seq_len: int, levels: int, pooling_factor: int) -> Tensor:
    """``o_sel [B, H, S_sel, D]`` -> ``out [B, N, H, D]``: causal, summed scatter to base positions; ``inv``
    ``[B, H_s, N_tot]``, the query heads of a group sharing their selection head's."""
    from .scatter import scatter_fwd_launch

    return scatter_fwd_launch(_last_dim_contiguous(o_sel), inv, seq_len, levels, pooling_factor)


@_scatter_op.register_fake
def _(o_sel, inv, codes, seq_len, levels, pooling_factor):
    batch, heads, _, dim = o_sel.shape
    return o_sel.new_empty(batch, seq_len, heads, dim)


@torch.library.custom_op("lighthouse::scatter_bwd", mutates_args=())
def _scatter_bwd_op(grad: Tensor, inv: Tensor, levels: int, pooling_factor: int, selected_len: int) -> Tensor:
    """``grad [B, N, H, D]`` -> ``[B, S_sel, H, D]`` (the caller views it as ``[B, H, S_sel, D]``)."""
    from .scatter import scatter_bwd_launch

    return scatter_bwd_launch(_last_dim_contiguous(grad), inv, levels, pooling_factor, selected_len)


@_scatter_bwd_op.register_fake
def _(grad, inv, levels, pooling_factor, selected_len):
    batch, _, heads, dim = grad.shape
    return grad.new_empty(batch, selected_len, heads, dim)


def _scatter_setup(ctx, inputs, output):
    o_sel, inv, _, _, levels, pooling_factor = inputs
    ctx.save_for_backward(inv)
    ctx.meta = (levels, pooling_factor, o_sel.shape[2])


def _scatter_backward(ctx, grad):
    (inv,) = ctx.saved_tensors
    d_sel = torch.ops.lighthouse.scatter_bwd(grad, inv, *ctx.meta)  # [B, S_sel, H, D]
    return d_sel.transpose(1, 2), None, None, None, None, None


_scatter_op.register_autograd(_scatter_backward, setup_context=_scatter_setup)


# ---------------------------------------------------------------- public functionals


def _codes(q: Tensor, k: Tensor, v: Tensor | None, options: LayerOptions) -> tuple[Tensor, Tensor]:
    """The selection (no gradient): norm scores in the select kernel, the dilated scorer's SDPA scores, or the
    strictly causal rule (README §8b) by the reference."""
    sizes = (options.levels, options.pooling_factor, options.topk)
    if options.causal:
        v = v.detach() if options.scorer == "dilated" else None
        return torch.ops.lighthouse.select_causal(q.detach(), k.detach(), v, *sizes, options.scorer, options.dilation)
    if options.scorer == "norm":
        return torch.ops.lighthouse.select(q.detach(), k.detach(), *sizes)
    from .dilated import dilated_scores

    score_q, score_k = dilated_scores(q.detach(), k.detach(), v.detach(), options.dilation)
    return torch.ops.lighthouse.select_scored(score_q, score_k, *sizes)


def triton_select_entries(
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
    """The kernels' selection for ``q, k [B, N, H, D]``, decoded: the Triton twin of ``naive.select_entries``."""
    from .common import decode_codes

    options = LayerOptions(levels, pooling_factor, topk, selection, scorer, dilation, causal)
    checked_geometry(q, k, v, options)
    codes, _ = _codes(q, k, v, options)
    return Selection(*decode_codes(codes))


def lighthouse_attention(
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
    """Lighthouse Attention on Triton kernels, same contract as the naive reference.

    ``q``: ``[B, N, H, D]`` CUDA tensors of one float dtype; ``k, v`` the same shape, or ``[B, N, H_kv, D]`` with
    ``selection="per_kv_group"`` (one selection per KV head; K and V are gathered once per KV head and SDPA runs
    with ``enable_gqa``). ``scorer``: ``"norm"`` or ``"dilated"`` (with ``dilation``). Returns ``[B, N, H, D]``.
    ``N`` must satisfy ``lighthouse_geometry`` (short sequences use fewer tiles). Selection carries no
    gradient; gradients flow through scatter, SDPA and gather to q, k, v. ``causal=True`` (README §8b): the
    strictly causal selection (op ``select_causal``, its own kernels); gather, SDPA and scatter as above.
    """
    options = LayerOptions(levels, pooling_factor, topk, selection, scorer, dilation, causal)
    geometry = checked_geometry(q, k, v, options)
    codes, inv = _codes(q, k, v, options)
    q_sel, k_sel, v_sel = torch.ops.lighthouse.gather(q, k, v, codes, inv, levels, pooling_factor)  # [B, S, H, D]
    o_sel = F.scaled_dot_product_attention(
        q_sel.transpose(1, 2),
        k_sel.transpose(1, 2),
        v_sel.transpose(1, 2),
        is_causal=True,
        scale=1.0 / math.sqrt(q.shape[3]),
        enable_gqa=q.shape[2] != k.shape[2],
    )  # [B, H, S_sel, D]
    return torch.ops.lighthouse.scatter(o_sel, inv, codes, geometry.seq_len, levels, pooling_factor)
