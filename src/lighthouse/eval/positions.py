"""Position ranges of the validation loss by position, and their names in logged tags (``val/loss_pos/1k-4k``).

Written by LitLM's validation, read back by the run reader and the plots: one naming, here.
"""

from __future__ import annotations


def position_buckets(max_len: int, first: int = 256, ratio: int = 4) -> list[tuple[int, int]]:
    """Geometric position ranges [0, 256), [256, 1k), [1k, 4k), ... covering ``max_len``."""
    edges = [0, first]
    while edges[-1] < max_len:
        edges.append(edges[-1] * ratio)
    edges[-1] = max_len
    return list(zip(edges[:-1], edges[1:], strict=True))


def short_length(n: int) -> str:
    """4096 -> "4k"; lengths that are not whole multiples of 1024 stay as digits."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def bucket_name(lo: int, hi: int) -> str:
    return f"{short_length(lo)}-{short_length(hi)}"


def bucket_start(name: str) -> int:
    """The first position of a range named by bucket_name ("1k-4k" -> 1024)."""
    start = name.split("-", 1)[0]
    return int(start[:-1]) * 1024 if start.endswith("k") else int(start)
