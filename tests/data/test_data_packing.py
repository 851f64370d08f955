"""The pure functions that specify the stream: the split rule, packing, windows, order, sharding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lighthouse.data.packing import (
    TAIL_SUFFIX,
    assign_splits,
    epoch_permutation,
    evenly_spaced,
    is_val,
    local_batches,
    num_windows,
    pack_documents,
    split_value,
    tail_length,
    window_span,
)


def test_pack_documents_exact():
    stream, starts = pack_documents([[5, 6], [], [7]], eos_id=9)
    assert stream.tolist() == [5, 6, 9, 9, 7, 9]
    assert starts.tolist() == [0, 3, 4]


@settings(max_examples=200, deadline=None)
@given(n_tokens=st.integers(0, 3000), seq_len=st.integers(1, 300))
def test_windows_make_every_token_a_target_once(n_tokens, seq_len):
    w = num_windows(n_tokens, seq_len)
    targets = np.zeros(n_tokens, dtype=np.int64)
    for k in range(w):
        lo, hi = window_span(k, seq_len)
        assert hi - lo == seq_len + 1 and hi <= n_tokens
        targets[lo + 1 : hi] += 1  # targets are window[1:]
    assert (targets[1 : w * seq_len + 1] == 1).all() and targets.sum() == w * seq_len
    assert n_tokens - 1 - w * seq_len < seq_len  # the untrained tail is shorter than one window


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.text(min_size=1, max_size=8), min_size=2, max_size=30, unique=True), f=st.floats(0.01, 0.99))
def test_split_assignment_is_per_key_for_two_or_more_documents(keys, f):
    docs = [(k, k * 3, i) for i, k in enumerate(keys)]
    out = list(assign_splits(docs, f))
    assert [(key, content, tag) for _, key, content, tag in out] == docs  # order and content untouched
    assert [split for split, *_ in out] == ["val" if is_val(k, f) else "train" for k in keys]
    assert all((split == "val") == (split_value(k) < f) for split, k, _, _ in out)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 5000), f=st.floats(0.001, 0.999))
def test_one_document_is_cut_into_a_train_head_and_a_val_tail(n, f):
    content = list(range(n))
    out = list(assign_splits([("doc", content, "tag")], f))
    tail = tail_length(n, f)
    if n < 2:
        assert tail == 0 and out == [("val" if is_val("doc", f) else "train", "doc", content, "tag")]
        return
    assert 1 <= tail <= n - 1
    if 1 <= f * n <= n - 1:  # otherwise clamped to leave both pieces non-empty
        assert abs(tail - f * n) <= 0.5
    assert out == [
        ("train", "doc", content[: n - tail], "tag"),
        ("val", "doc" + TAIL_SUFFIX, content[n - tail :], "tag"),
    ]


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (4, 3), (3, 2)], ids=lambda v: str(v))
def test_local_batches_partition_the_global_batches(world, workers):
    seen = []
    for rank, worker in itertools.product(range(world), range(workers)):
        seen += [g for _, g in itertools.islice(local_batches(rank, world, worker, workers), 25)]
    assert sorted(seen) == list(range(25 * world * workers))  # no global batch twice, none skipped
    # a rank's local order is j = 0, 1, 2, ... once its workers are interleaved round-robin
    for rank in range(world):
        merged = [
            next(it)
            for it in itertools.islice(
                itertools.cycle([local_batches(rank, world, w, workers) for w in range(workers)]), 12
            )
        ]
        assert [j for j, _ in merged] == list(range(12))


@pytest.mark.parametrize("g,world", [(4, 1), (4, 2), (5, 2), (3, 4)])
def test_finite_batches_are_equal_per_rank_and_cover_all(g, world):
    per_rank = [[b for _, b in local_batches(r, world, 0, 1, g)] for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1
    assert set().union(*map(set, per_rank)) == set(range(g))


def test_epoch_permutations_are_seeded():
    p = epoch_permutation(1000, seed=1, epoch=0)
    assert sorted(p.tolist()) == list(range(1000))
    assert (p == epoch_permutation(1000, seed=1, epoch=0)).all()
    assert not (p == epoch_permutation(1000, seed=2, epoch=0)).all()
    assert not (p == epoch_permutation(1000, seed=1, epoch=1)).all()


@given(n_available=st.integers(1, 500), n_wanted=st.integers(1, 600))
def test_evenly_spaced(n_available, n_wanted):
    idx = evenly_spaced(n_available, n_wanted)
    assert len(idx) == min(n_available, n_wanted)
    assert (np.diff(idx) > 0).all() and idx[0] == 0 and idx[-1] < n_available
