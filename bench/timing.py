"""The one timing helper for every benchmark: CUDA events, warm-up first, median of the timed repeats."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def cuda_time_ms(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of ``fn()`` on the current CUDA stream, in milliseconds.

    Each repeat is bracketed by its own pair of events, so the median drops outliers (a clock ramp,
    a stray allocation); warm-up calls keep compilation, autotuning and allocator growth out of it.
    """
    if reps < 10:
        raise ValueError("report a median of at least 10 repeats")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs)


def peak_memory_gib(fn: Callable[[], object]) -> float:
    """Peak memory PyTorch allocates while ``fn()`` runs, above what was already allocated (the inputs)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**30


def cuda_graph_time_ms(fn: Callable[[], object], *, warmup: int = 3, reps: int = 10) -> float:
    """Like ``cuda_time_ms`` for ``fn`` captured in a CUDA graph: device time without the host's launch gaps
    (for stages too short to hide the Python and launch overhead of an eager call)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return cuda_time_ms(graph.replay, warmup=1, reps=reps)
