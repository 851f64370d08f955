"""An ordered map over worker processes: results in task order, bounded read-ahead, a dead worker is an error.

Used to read and tokenize a corpus one file (or one batch of records) per task. Results come back in task order,
so what is built does not depend on the process count.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor


def useful_processes(num_proc: int, total_bytes: int | None, fast: bool) -> int:
    """Processes worth starting: one per 256 MB when the work is fast (reading, byte tokenizer: ~100 MB/s
    in one process, so below that a pool only adds start-up and pickling), one per 4 MB for BPE (~1 MB/s)."""
    if total_bytes is None:
        return num_proc
    per_proc = (256 if fast else 4) * 2**20
    return max(1, min(num_proc, total_bytes // per_proc))


def ordered_map(
    fn: Callable, tasks: Iterable, num_proc: int, initializer: Callable | None = None, initargs: tuple = ()
) -> Iterator:
    """``fn`` over ``tasks``, results in task order. With num_proc > 1 it runs in worker processes (each started
    with ``initializer(*initargs)``) with at most 2 * num_proc tasks in flight, so a cap, an error or an unbounded
    stream never reads far ahead; otherwise in this process, where ``initializer`` does not run."""
    if num_proc <= 1:
        yield from map(fn, tasks)
        return
    # fork on Linux (no re-import of __main__, which may import torch and Lightning: seconds per process);
    # the children run only numpy and tokenizers code. spawn elsewhere (fork is unsafe on macOS).
    # A ProcessPoolExecutor, not a multiprocessing.Pool: a worker that dies (killed, out of memory) raises
    # BrokenProcessPool here instead of leaving the parent waiting forever for its result.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pending: deque = deque()
    with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=initializer, initargs=initargs) as pool:
        try:
            for i, task in enumerate(tasks):
                pending.append(_submit_first(pool, fn, task) if i == 0 else pool.submit(fn, task))
                if len(pending) >= 2 * num_proc:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (a cap, an error): drop what has not started
            for future in pending:
                future.cancel()


def _submit_first(pool: ProcessPoolExecutor, fn: Callable, task) -> Future:
    """Submit with TOKENIZERS_PARALLELISM=false in the environment: the first submit starts the workers, which
    then take their parallelism from processes (and the tokenizers library prints no fork warning)."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return pool.submit(fn, task)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
