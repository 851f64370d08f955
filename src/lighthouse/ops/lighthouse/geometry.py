"""The shape contract of a Lighthouse layer: valid (N, L, p, K), every derived size, the input checks, `Selection`.

One place decides which (N, L, p, K) are valid and how long everything is, so the reference, the kernels, the
fake implementations of the torch.library ops and the config validation cannot disagree. The size formulas are
plain integer arithmetic (``//``, ``*``, ``min``), so they hold for the symbolic lengths (SymInts) that
torch.compile traces with as well as for ints. The math behind the numbers is in README.md beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

# Every tile refines exactly this many entries per level: 64 picked by the query score and 64 by the key score.
REFINED_PER_TILE = 128
PICKED_PER_SCORE = REFINED_PER_TILE // 2


def min_seq_len(levels: int, pooling_factor: int) -> int:
    """Shortest sequence a Lighthouse layer accepts: one tile of 128 coarsest entries."""
    return REFINED_PER_TILE * pooling_factor ** (levels - 1)


def level_sizes(seq_len: int, levels: int, pooling_factor: int) -> list[int]:
    """Entries per level, base first: ``[N, N/p, ..., N/p^(L-1)]``."""
    return [seq_len // pooling_factor ** (level - 1) for level in range(1, levels + 1)]


def total_entries(seq_len: int, levels: int, pooling_factor: int) -> int:
    """``N_tot = N + N/p + ... + N/p^(L-1)``: entries of all levels, laid end to end base first (scores, ``inv``)."""
    return sum(level_sizes(seq_len, levels, pooling_factor))


@dataclass(frozen=True)
class LighthouseGeometry:
    """Derived sizes of one Lighthouse layer for a sequence of ``seq_len`` base positions.

    ``lighthouse_geometry`` validates and builds one; building it directly checks nothing (the torch.library
    ops do that on parameters their caller has validated, and fake implementations on SymInt lengths).
    """

    seq_len: int
    levels: int
    pooling_factor: int
    topk: int

    @property
    def num_tiles(self) -> int:
        """Tiles actually used: ``topk // 128``, or fewer for short sequences (then ``effective_topk < topk``)."""
        return min(self.topk // REFINED_PER_TILE, self.seq_len // min_seq_len(self.levels, self.pooling_factor))

    @property
    def effective_topk(self) -> int:
        return self.num_tiles * REFINED_PER_TILE

    @property
    def coarse_span(self) -> int:
        """Base positions covered by one entry of the coarsest level, ``p^(L-1)``."""
        return self.pooling_factor ** (self.levels - 1)

    @property
    def coarse_len(self) -> int:
        """Entries of the coarsest level, ``N / p^(L-1)``."""
        return self.seq_len // self.coarse_span

    @property
    def coarse_per_tile(self) -> int:
        """Coarsest entries owned by one tile (``Nc``); always >= 128."""
        return self.coarse_len // self.num_tiles

    @property
    def tile_len(self) -> int:
        """Base positions covered by one tile."""
        return self.seq_len // self.num_tiles

    @property
    def selected_per_tile(self) -> int:
        """Entries one tile emits, ``S_tile = Nc + (L-1) * p * 128``."""
        return self.coarse_per_tile + (self.levels - 1) * self.pooling_factor * REFINED_PER_TILE

    @property
    def selected_len(self) -> int:
        """``S_sel = N / p^(L-1) + (L-1) * p * K_eff``: the length SDPA runs on."""
        return self.num_tiles * self.selected_per_tile

    @property
    def total_entries(self) -> int:
        """``N_tot``, see ``total_entries``."""
        return total_entries(self.seq_len, self.levels, self.pooling_factor)


def check_lighthouse_params(levels: int, pooling_factor: int, topk: int) -> None:
    """Raise ValueError naming the field and its valid range if a Lighthouse parameter is invalid."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} is invalid: it must be an integer >= 2")
    if not isinstance(pooling_factor, int) or pooling_factor < 2 or pooling_factor & (pooling_factor - 1):
        raise ValueError(f"pooling_factor={pooling_factor!r} is invalid: it must be a power of two >= 2 (2, 4, 8, ...)")
    if not isinstance(topk, int) or topk < REFINED_PER_TILE or topk % REFINED_PER_TILE:
        raise ValueError(f"topk={topk!r} is invalid: it must be a positive multiple of {REFINED_PER_TILE}")


def lighthouse_geometry(seq_len: int, levels: int, pooling_factor: int, topk: int) -> LighthouseGeometry:
    """Validate (N, L, p, K) and return the layer's sizes (``fit_seq_len``)."""
    check_lighthouse_params(levels, pooling_factor, topk)
    return fit_seq_len(seq_len, levels, pooling_factor, topk)


def fit_seq_len(seq_len: int, levels: int, pooling_factor: int, topk: int) -> LighthouseGeometry:
    """The layer's sizes for ``seq_len`` under (L, p, K) that ``check_lighthouse_params`` accepted (a caller that
    checked them once, like the model config, checks only the length here); refuses a length they do not fit.

    Sequences shorter than ``topk * p^(L-1)`` use fewer tiles, so the effective top-k shrinks to
    ``128 * (N // (128 * p^(L-1)))``; each tile still owns at least 128 coarsest entries, which the
    selection needs. The tiles must split the coarsest level evenly.
    """
    shortest = min_seq_len(levels, pooling_factor)
    if not isinstance(seq_len, int) or seq_len < shortest:
        raise ValueError(
            f"sequence length {seq_len!r} is too short for levels={levels}, pooling_factor={pooling_factor}: "
            f"it must be >= 128 * pooling_factor**(levels-1) = {shortest}"
        )
    geometry = LighthouseGeometry(seq_len, levels, pooling_factor, topk)
    span, tiles = geometry.coarse_span, geometry.num_tiles
    if seq_len % (span * tiles):
        raise ValueError(
            f"sequence length {seq_len} must be a multiple of pooling_factor**(levels-1) * tiles = "
            f"{span} * {tiles} = {span * tiles} (tiles = min(topk/128, N // {shortest}))"
        )
    return geometry


SELECTIONS = ("paper", "per_kv_group")
"""``paper``: one selection per query head (K/V expanded to H by the caller). ``per_kv_group``: one per KV head."""
SCORERS = ("norm", "dilated")
"""``norm``: L2 norms of q and k rows (README §2). ``dilated``: norms of dilated causal attention outputs (§2b)."""


def check_options(selection: str, scorer: str, dilation: int, causal: bool) -> None:
    """Raise ValueError naming the option and its valid values if ``selection``, ``scorer``, ``dilation`` or
    ``causal`` is bad."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is not one of {SELECTIONS}")
    if scorer not in SCORERS:
        raise ValueError(f"scorer={scorer!r} is not one of {SCORERS}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"dilation={dilation!r} is invalid: it must be an integer >= 1")
    if not isinstance(causal, bool):
        raise ValueError(f"causal={causal!r} is invalid: it must be a bool (true or false)")


def check_inputs(*tensors: Tensor, grouped: bool = False) -> None:
    """``q, k`` (and ``v``) must be ``[B, N, H, D]`` of one shape and one floating point dtype.

    ``grouped`` (the ``per_kv_group`` selection): k and v are ``[B, N, H_kv, D]`` of one shape instead, with
    ``H_kv`` dividing q's ``H``.
    """
    first = tensors[0]
    for name, x in zip("qkv", tensors, strict=False):
        if x.dim() != 4:
            raise ValueError(f"{name} must be [B, N, H, D], got shape {tuple(x.shape)}")
        if 0 in x.shape:  # was an IndexError or ZeroDivisionError deep in a kernel launch
            raise ValueError(f"{name} must be [B, N, H, D] with every size >= 1, got shape {tuple(x.shape)}")
        if not grouped and x.shape != first.shape:
            raise ValueError(
                f"q, k, v must have the same shape [B, N, H, D], got {tuple(first.shape)} and {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got {x.dtype}")
        if x.dtype != first.dtype:
            raise ValueError(f"q, k, v must share one dtype, got {first.dtype} and {x.dtype}")
    if not grouped:
        return
    k = tensors[1]
    if any(x.shape != k.shape for x in tensors[2:]):
        raise ValueError(f"k and v must have the same shape [B, N, H_kv, D], got {[tuple(x.shape) for x in tensors]}")
    if k.shape[:2] != first.shape[:2] or k.shape[3] != first.shape[3] or first.shape[2] % k.shape[2]:
        raise ValueError(
            f"selection='per_kv_group' needs q [B, N, H, D] and k, v [B, N, H_kv, D] with H_kv dividing H, got "
            f"q {tuple(first.shape)} and k {tuple(k.shape)}"
        )


class LayerOptions(NamedTuple):
    """The keyword arguments every layer functional takes (naive and Triton, selection and attention), carried
    as one value from the functional to the validation and the stages that read them."""

    levels: int
    pooling_factor: int
    topk: int
    selection: str = "paper"
    scorer: str = "norm"
    dilation: int = 4
    causal: bool = False


def checked_geometry(q: Tensor, k: Tensor, v: Tensor | None, options: LayerOptions) -> LighthouseGeometry:
    """The one validation of a layer call: the options, the inputs (``check_inputs``; ``v`` may be None where
    only the selection is asked for), then (N, L, p, K); the dilated scorer also needs ``v``, and ``dilation``
    dividing N (its subsequences have equal lengths)."""
    check_options(options.selection, options.scorer, options.dilation, options.causal)
    if options.scorer == "dilated" and v is None:
        raise ValueError("scorer='dilated' needs v: pass q, k, v (the scorer attends over v)")
    check_inputs(*((q, k) if v is None else (q, k, v)), grouped=options.selection == "per_kv_group")
    geometry = lighthouse_geometry(q.shape[1], options.levels, options.pooling_factor, options.topk)
    if options.scorer == "dilated" and geometry.seq_len % options.dilation:
        raise ValueError(f"dilation={options.dilation} must divide the sequence length {geometry.seq_len}")
    return geometry


class Selection(NamedTuple):
    """The emitted entries of every (batch, head), in compacted order (sorted by the README §4 key). ``H`` is the
    number of selection heads: query heads for ``selection="paper"``, KV heads for ``"per_kv_group"``."""

    level: Tensor
    """``[B, H, S_sel]`` int64: 1 = base level ... L = coarsest."""
    index: Tensor
    """``[B, H, S_sel]`` int64: index of the entry within its level."""
    refined: Tensor
    """``[B, H, S_sel]`` bool: True for a refined entry (its children were emitted too), False for a leaf."""
