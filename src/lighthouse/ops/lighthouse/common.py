"""What the Triton kernels share: the formats they exchange and every helper more than one kernel file uses.

The kernel files (select.py, gather.py, scatter.py) import this file and geometry.py, never each other.

Formats (the contract between the kernels and interface.py):
    codes ``[B, H, S_sel]`` int32, one per compacted slot: ``index | refined << 24 | level << 25``
          (level 1 = base .. L = coarsest, index within its level, so N < 2^24); written by select.py (or,
          for a selection made by PyTorch code, by ``encode_selection``), decoded on the host by ``decode_codes``.
    inv   ``[B, H, N_tot]`` int32, the inverse map: the compacted slot of entry (level, index) at
          ``level_offset(level) + index``, or -1 where the entry was not emitted. The fp32 score pyramid
          uses the same concatenated layout: all levels end to end, base first (``geometry.total_entries``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .naive import level_offsets

# The bit layout of a selection code. Kernels may only read globals that are tl.constexpr; host code reads
# the ints with .value.
CODE_INDEX_BITS = tl.constexpr(24)
CODE_INDEX_MASK = tl.constexpr((1 << CODE_INDEX_BITS.value) - 1)
CODE_REFINED_SHIFT = tl.constexpr(CODE_INDEX_BITS.value)
CODE_LEVEL_SHIFT = tl.constexpr(CODE_INDEX_BITS.value + 1)


@triton.jit
def encode_code(index, refined, level):
    """Codes (int64) of the entries ``index`` (int64) of level ``level`` (an int), refined where ``refined``."""
    # The level goes through a tensor: in Triton's interpreter a constexpr argument is a plain int, and
    # `int << constexpr` has no Python meaning.
    level_bits = tl.full(index.shape, level, tl.int64) << CODE_LEVEL_SHIFT
    return index | (refined.to(tl.int64) << CODE_REFINED_SHIFT) | level_bits


@triton.jit
def code_level(code):
    return code >> CODE_LEVEL_SHIFT


@triton.jit
def code_index(code):
    return code & CODE_INDEX_MASK


def decode_codes(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``codes`` -> (level int64, index int64, refined bool), each shaped like ``codes``."""
    codes = codes.long()
    index = codes & CODE_INDEX_MASK.value
    refined = ((codes >> CODE_REFINED_SHIFT.value) & 1).bool()
    level = codes >> CODE_LEVEL_SHIFT.value
    return level, index, refined


def encode_selection(
    level: torch.Tensor, index: torch.Tensor, refined: torch.Tensor, sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A selection made by PyTorch code (the reference's, ``[B, H, S_sel]`` per field, compacted order) in the kernels'
    formats: (``codes``, ``inv``). ``sizes``: the entries of each level, base first (``level_sizes``)."""
    codes = index | (refined.long() << CODE_REFINED_SHIFT.value) | (level << CODE_LEVEL_SHIFT.value)
    starts = level_offsets(sizes, index.device)  # level l at starts[l]
    slots = torch.arange(index.shape[-1], device=index.device, dtype=torch.int32).expand(index.shape)
    inv = torch.full((*index.shape[:2], sum(sizes)), -1, dtype=torch.int32, device=index.device)
    return codes.int(), inv.scatter_(-1, starts[level] + index, slots)


# ---------------------------------------------------------------- the concatenated-levels layout


@triton.jit
def level_offset(n, LEVEL: tl.constexpr, LOG2P: tl.constexpr):
    """Start of level ``LEVEL`` (1-based, constexpr) in the concatenated ``[N_tot]`` layout."""
    off = n * 0
    for m in tl.static_range(1, LEVEL):
        off += n >> (LOG2P * (m - 1))
    return off


@triton.jit
def level_offset_vec(n, level, LEVELS: tl.constexpr, LOG2P: tl.constexpr):
    """Like ``level_offset`` for a tensor of run-time levels."""
    off = level * 0
    for m in tl.static_range(1, LEVELS):
        off += tl.where(level > m, n >> (LOG2P * (m - 1)), 0)
    return off


@triton.jit
def inverse_map_row(inv_ptr, b, h, H, N_TOT):
    """The ``[N_tot]`` row of ``inv`` for batch ``b``, head ``h``."""
    return inv_ptr + (b * H + h).to(tl.int64) * N_TOT


# ---------------------------------------------------------------- program blocks


@triton.jit
def base_row_block(N, H, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
    """This program's batch, head, block of base rows and D lanes, with their masks, for the kernels that
    walk base rows on a (row blocks, batch*head) grid and write each output row once."""
    pid_bh = tl.program_id(1)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    return pid_bh // H, pid_bh % H, n, n < N, d, d < D


@triton.jit
def store_base_rows(ptr, acc, b, h, n, live, d, dmask, N, H, D: tl.constexpr):
    """Write ``acc [BLOCK_N, BLOCK_D]`` to rows ``n`` of head ``h`` of a contiguous ``[B, N, H, D]`` tensor."""
    out = ((b.to(tl.int64) * N + n)[:, None] * H + h) * D + d[None, :]
    tl.store(ptr + out, acc.to(ptr.dtype.element_ty), mask=live[:, None] & dmask[None, :])


@triton.jit
def pooling_block(H, SUB: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
    """This program's batch, head, first base row and chunk of D lanes (with its mask), for the kernels that
    pool SUB base rows at a time on a (row blocks, batch*head, D chunks) grid (``pool_to_slots``)."""
    pid_bh = tl.program_id(1)
    d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    return pid_bh // H, pid_bh % H, tl.program_id(0) * SUB, d, d < D


@triton.jit
def compacted_head(b, h, S_SEL, H, D: tl.constexpr):
    """Offset of slot 0 of head ``h`` of batch ``b`` in a contiguous ``[B, S_sel, H, D]`` tensor: the layout
    SDPA reads as ``[B, H, S_sel, D]`` through a transpose (slots are ``H * D`` elements apart)."""
    return (b.to(tl.int64) * S_SEL * H + h) * D


@triton.jit
def pool_to_slots(
    x, m0, dst_ptr, inv_row, N, SLOT_STRIDE, d, dmask,
    SUB: tl.constexpr, POOL_ROWS: tl.constexpr, LEVELS: tl.constexpr, LOG2P: tl.constexpr,
    SHIFT: tl.constexpr, MEAN: tl.constexpr,
):  # fmt: skip
    """Pool ``x`` ``[SUB, BLOCK_D]`` (input dtype, rows ``m0 .. m0 + SUB``) over the aligned spans of every
    level and write each span's sum (or mean), in fp32 then rounded once, to the slot of entry
    ``m // c_l - SHIFT`` of that level, if that entry was emitted.

    ``dst_ptr`` points at slot 0 of this (batch, head, D chunk); slots are ``SLOT_STRIDE`` elements apart.
    The coarser levels are pooled by one small matmul on the tensor cores, ``W @ x``: row ``r`` of ``W``
    averages the span of one entry (levels stacked, ``POOL_ROWS`` >= 16 rows in all). Products with a
    power of two are exact and the accumulation is fp32, so this equals the fp32 sum / mean. (A reshape
    and sum across rows cost shared-memory round trips and ~100 barriers per program.)
    """
    # Level 1: the rows themselves.
    entry = m0 + tl.arange(0, SUB) - SHIFT
    slot = tl.load(inv_row + entry, mask=(entry >= 0) & (entry < N), other=-1)
    dst = dst_ptr + slot.to(tl.int64)[:, None] * SLOT_STRIDE + d[None, :]
    tl.store(dst, x.to(dst_ptr.dtype.element_ty), mask=(slot >= 0)[:, None] & dmask[None, :])

    # Levels 2..L: which entry (and where its inverse-map row lives) each row of W pools.
    r = tl.arange(0, POOL_ROWS)
    cols = tl.arange(0, SUB)
    pool = tl.zeros([POOL_ROWS, SUB], dtype=tl.float32)
    entry = r * 0 - 1  # -1: row unused
    inv_off = r * 0
    first = N * 0  # first row of W for this level
    off = N * 0
    n_level = N
    for lv in tl.static_range(1, LEVELS):
        off += n_level
        n_level = n_level >> LOG2P
        local = r - first
        mine = (local >= 0) & (local < (SUB >> (LOG2P * lv)))
        weight = (1.0 / (1 << (LOG2P * lv))) if MEAN else 1.0
        pool = tl.where(mine[:, None] & ((cols[None, :] >> (LOG2P * lv)) == local[:, None]), weight, pool)
        level_entry = (m0 >> (LOG2P * lv)) + local - SHIFT
        ok = mine & (level_entry >= 0) & (level_entry < n_level)
        entry = tl.where(ok, level_entry, entry)
        inv_off = tl.where(ok, off, inv_off)
        first += SUB >> (LOG2P * lv)
    if x.dtype == tl.float32:
        pooled = tl.dot(pool, x, input_precision="ieee")
    else:
        pooled = tl.dot(pool.to(x.dtype), x)
    slot = tl.load(inv_row + inv_off + entry, mask=entry >= 0, other=-1)
    dst = dst_ptr + slot.to(tl.int64)[:, None] * SLOT_STRIDE + d[None, :]
    tl.store(dst, pooled.to(dst_ptr.dtype.element_ty), mask=(slot >= 0)[:, None] & dmask[None, :])


# ---------------------------------------------------------------- the compacted order (both selection kernels)


@triton.jit
def count_smaller(list_ptr, length, word, STEPS: tl.constexpr):
    """For each ``word``: how many of the ``length`` ascending words at ``list_ptr`` are smaller
    (branchless binary search; ``2^STEPS > length``)."""
    below = (word * 0).to(tl.int32)
    for t in range(STEPS):
        probe = below + (1 << (STEPS - 1 - t))
        seen = tl.load(list_ptr + probe - 1, mask=probe <= length, other=0x7FFFFFFFFFFFFFFF)
        below = tl.where(seen < word, probe, below)
    return below


@triton.jit
def place_entries(
    words_ptr,
    word,
    live,
    tile,
    codes_row,
    inv_row,
    N,
    NC,
    S_TILE,
    LEVELS: tl.constexpr,
    LOG2P: tl.constexpr,
    CHILDREN: tl.constexpr,
    NC_STEPS: tl.constexpr,
):
    """Write the entries ``word`` (of one level) to their compacted slots: the slot within the tile is the
    number of emitted entries with a smaller key, summed over the per-level ascending lists."""
    rank = count_smaller(words_ptr, NC, word, NC_STEPS)
    for step in tl.static_range(1, LEVELS):
        rank += count_smaller(words_ptr + NC + (step - 1) * CHILDREN, CHILDREN, word, LOG2P + 8)
    slot = tile * S_TILE + rank
    code = (word & 0xFFFFFFFF).to(tl.int32)
    tl.store(codes_row + slot, code, mask=live)
    tl.store(inv_row + level_offset_vec(N, code_level(code), LEVELS, LOG2P) + code_index(code), slot, mask=live)


@triton.jit
def order_word(index, refined, LEVEL: tl.constexpr, LEVELS: tl.constexpr, LOG2P: tl.constexpr):
    """Order word: README §4 key * 2^(L-1) in the high 32 bits, the code (level, refined, index) in the low."""
    shift: tl.constexpr = LOG2P * (LEVEL - 1) + LEVELS - 1
    idx = index.to(tl.int64)
    leaf_key = idx << shift
    refined_key = ((idx + 1) << shift) - (1 << (LEVELS - LEVEL))
    key = tl.where(refined, refined_key, leaf_key)
    return (key << 32) | encode_code(idx, refined, LEVEL)


@triton.jit
def place_tile(
    words_ptr, tile, codes_row, inv_row, N, NC, S_TILE,
    NC_BLOCK: tl.constexpr, NC_STEPS: tl.constexpr, LEVELS: tl.constexpr, LOG2P: tl.constexpr,
    CHILDREN: tl.constexpr,
):  # fmt: skip
    """Place a tile's emitted entries: ``words_ptr`` holds its order words per level, each list ascending (the
    coarsest level's NC, then CHILDREN for each finer level, base last); slot = the tile's first slot + the
    number of the tile's entries with a smaller word."""
    lane = tl.arange(0, NC_BLOCK)
    word = tl.load(words_ptr + lane, mask=lane < NC, other=0)
    place_entries(
        words_ptr, word, lane < NC, tile, codes_row, inv_row, N, NC, S_TILE, LEVELS, LOG2P, CHILDREN, NC_STEPS
    )
    child = tl.arange(0, CHILDREN)
    for step in tl.static_range(1, LEVELS):
        word = tl.load(words_ptr + NC + (step - 1) * CHILDREN + child)
        place_entries(
            words_ptr, word, child >= 0, tile, codes_row, inv_row, N, NC, S_TILE, LEVELS, LOG2P, CHILDREN, NC_STEPS
        )


# ---------------------------------------------------------------- launch parameters (host)


def level_constexprs(levels: int, pooling_factor: int) -> dict[str, int]:
    """The constexprs every kernel takes: ``LEVELS`` and ``LOG2P`` (p is a power of two, so spans are shifts)."""
    return {"LEVELS": levels, "LOG2P": pooling_factor.bit_length() - 1}


MAX_WARPS = 32
"""A CUDA block holds at most 1024 threads: a launch with more warps fails (``num_warps`` 64 was reached by the
selections at a coarsest level of 8192+ entries per tile, e.g. N = 1M with topk = 1024)."""


def warps_for(elements: int, per_warp: int) -> int:
    """``num_warps`` for a program over ``elements`` lanes, one warp per ``per_warp`` of them, in [1, 32]."""
    return min(MAX_WARPS, max(1, elements // per_warp))


def rows_per_program(x: torch.Tensor, gpu_rows: int) -> int:
    """Block of rows per program: ``gpu_rows`` on the GPU; on CPU (Triton's interpreter, tests only) 16x
    larger, since the interpreter pays per program and per op, not per element."""
    return gpu_rows if x.is_cuda else 16 * gpu_rows


def span_block(seq_len: int, span: int, target: int) -> int:
    """Power-of-two block of base rows that holds whole spans of ``span`` rows, divides ``seq_len`` (a
    multiple of 128 coarsest spans) and is as close to ``target`` as that allows."""
    block = span
    while block < target and seq_len % (2 * block) == 0:
        block *= 2
    return block


def pool_blocking(x: torch.Tensor, dim: int, levels: int, pooling_factor: int) -> tuple[int, int, int]:
    """(SUB rows, BLOCK_D, POOL_ROWS) for the kernels that call ``pool_to_slots``: SUB holds whole coarsest
    spans and divides N; wide spans take a narrower D chunk so a program's tile stays about 4096 elements
    (registers, not local memory); POOL_ROWS counts the pooled rows of levels 2..L, padded for tl.dot (>= 16,
    a power of two)."""
    sub = span_block(x.shape[1], pooling_factor ** (levels - 1), rows_per_program(x, 32 if dim > 64 else 64))
    block_d = triton.next_power_of_2(dim)
    if x.is_cuda:
        block_d = min(block_d, max(16, 4096 // sub))
    pooled = sum(sub // pooling_factor**level for level in range(1, levels))
    return sub, block_d, max(16, triton.next_power_of_2(pooled))
