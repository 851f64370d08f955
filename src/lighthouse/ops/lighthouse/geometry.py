"""Shape arithmetic of a Lighthouse layer: tiles, budget and the sequence-length rule.

One place decides which (N, L, p, K) are valid, so the reference layer, the kernels and the
config validation can never disagree. The math behind the numbers is in README.md beside this file.
"""

from __future__ import annotations

from dataclasses import dataclass

# Every tile refines exactly this many entries per level: 64 picked by the query score and 64 by the key score.
REFINED_PER_TILE = 128
PICKED_PER_SCORE = REFINED_PER_TILE // 2


@dataclass(frozen=True)
class LighthouseGeometry:
    """Derived sizes of one Lighthouse layer for a sequence of ``seq_len`` base positions."""

    seq_len: int
    levels: int
    pooling_factor: int
    topk: int
    num_tiles: int
    """Tiles actually used: ``topk // 128``, or fewer for short sequences (then ``effective_topk < topk``)."""

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
        """Coarsest entries owned by one tile (``Nc`` in the spec); always >= 128."""
        return self.coarse_len // self.num_tiles

    @property
    def tile_len(self) -> int:
        """Base positions covered by one tile."""
        return self.seq_len // self.num_tiles

    @property
    def selected_per_tile(self) -> int:
        """Entries one tile emits: ``Nc + (L-1) * p * 128``."""
        return self.coarse_per_tile + (self.levels - 1) * self.pooling_factor * REFINED_PER_TILE

    @property
    def selected_len(self) -> int:
        """``S_sel = N / p^(L-1) + (L-1) * p * K_eff``: the length SDPA runs on."""
        return self.num_tiles * self.selected_per_tile


def check_lighthouse_params(levels: int, pooling_factor: int, topk: int) -> None:
    """Raise ValueError naming the field and its valid range if a Lighthouse parameter is invalid."""
    if not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels={levels!r} is invalid: it must be an integer >= 2")
    if not isinstance(pooling_factor, int) or pooling_factor < 2 or pooling_factor & (pooling_factor - 1):
        raise ValueError(
            f"pooling_factor={pooling_factor!r} is invalid: it must be a power of two >= 2 (2, 4, 8, ...)"
        )
    if not isinstance(topk, int) or topk < REFINED_PER_TILE or topk % REFINED_PER_TILE:
        raise ValueError(f"topk={topk!r} is invalid: it must be a positive multiple of {REFINED_PER_TILE}")


def min_seq_len(levels: int, pooling_factor: int) -> int:
    """Shortest sequence a Lighthouse layer accepts: one tile of 128 coarsest entries."""
    return REFINED_PER_TILE * pooling_factor ** (levels - 1)


def lighthouse_geometry(seq_len: int, levels: int, pooling_factor: int, topk: int) -> LighthouseGeometry:
    """Validate (N, L, p, K) and return the layer's sizes.

    Sequences shorter than ``topk * p^(L-1)`` use fewer tiles, so the effective top-k shrinks to
    ``128 * (N // (128 * p^(L-1)))``; each tile still owns at least 128 coarsest entries, which the
    selection needs. The tiles must split the coarsest level evenly.
    """
    check_lighthouse_params(levels, pooling_factor, topk)
    shortest = min_seq_len(levels, pooling_factor)
    if not isinstance(seq_len, int) or seq_len < shortest:
        raise ValueError(
            f"sequence length {seq_len!r} is too short for levels={levels}, pooling_factor={pooling_factor}: "
            f"it must be >= 128 * pooling_factor**(levels-1) = {shortest}"
        )
    span = pooling_factor ** (levels - 1)
    num_tiles = min(topk // REFINED_PER_TILE, seq_len // shortest)
    if seq_len % (span * num_tiles):
        raise ValueError(
            f"sequence length {seq_len} must be a multiple of pooling_factor**(levels-1) * tiles = "
            f"{span} * {num_tiles} = {span * num_tiles} (tiles = min(topk/128, N // {shortest}))"
        )
    return LighthouseGeometry(seq_len, levels, pooling_factor, topk, num_tiles)
