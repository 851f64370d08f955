"""Window stream: nothing lost or repeated over ranks/workers, seeded order, resume, long documents, validation,
the window-mix seam."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from datagen import take
from torch.utils.data import DataLoader

from lighthouse.data.stream import PackedWindows

L, B = 64, 3


def batches(ds, n, workers=0):
    return take(DataLoader(ds, batch_size=None, num_workers=workers), n)


def stream_and_index(ds):
    """The packed train stream T and {window bytes: window index} (windows of the test corpus are unique)."""
    split = ds.split
    t = split.read(0, split.n_tokens)
    ref = {t[k * L : k * L + L + 1].tobytes(): k for k in range(ds.num_windows)}
    assert len(ref) == ds.num_windows
    return t, ref


@pytest.fixture
def dm(corpus_dir, make_dm):
    dm = make_dm(corpus_dir, seq_len=L, batch_size=B)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("workers", [0, 2], ids=lambda k: f"workers{k}")
@pytest.mark.parametrize("world", [1, 2, 4], ids=lambda r: f"world{r}")
def test_union_over_ranks_and_workers_is_the_packed_stream(dm, world, workers):
    t, ref = stream_and_index(dm.train_dataset(0, 1))
    w = len(ref)
    n_local = -(-w // (world * B))
    index_at = {}  # global stream position -> window index
    for rank in range(world):
        for j, batch in enumerate(batches(dm.train_dataset(rank, world), n_local, workers)):
            assert batch["tokens"].shape == (B, L + 1) and batch["tokens"].dtype == torch.int64
            g = j * world + rank
            for b, row in enumerate(batch["tokens"].numpy()):
                index_at[g * B + b] = ref[row.tobytes()]  # KeyError: not a window of the stream
    first_epoch = [index_at[p] for p in range(w)]
    assert sorted(first_epoch) == list(range(w))  # each window exactly once
    rebuilt = np.concatenate([t[:1]] + [t[k * L + 1 : k * L + L + 1] for k in sorted(first_epoch)])
    assert np.array_equal(rebuilt, t[: w * L + 1])  # every token (but the short tail) a target once


def test_same_seed_same_order_other_seed_other_order(corpus_dir, make_dm):
    def first(seed):
        d = make_dm(corpus_dir, seq_len=L, batch_size=B, seed=seed)
        return torch.cat([b["tokens"] for b in batches(d.train_dataset(), 6)])

    assert torch.equal(first(1), first(1))
    assert not torch.equal(first(1), first(2))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores, on purpose
def test_order_does_not_depend_on_worker_count(dm):
    ref = torch.cat([b["tokens"] for b in batches(dm.train_dataset(), 7, workers=0)])
    for workers in (1, 3):
        assert torch.equal(torch.cat([b["tokens"] for b in batches(dm.train_dataset(), 7, workers)]), ref)


def test_each_epoch_is_a_new_permutation(dm):
    ds = dm.train_dataset()
    _, ref = stream_and_index(ds)
    w = len(ref)
    rows = torch.cat([b["tokens"] for b in batches(ds, -(-2 * w // B))]).numpy()
    idx = [ref[r.tobytes()] for r in rows]
    assert sorted(idx[:w]) == list(range(w)) and sorted(idx[w : 2 * w]) == list(range(w))
    assert idx[:w] != idx[w : 2 * w]


@pytest.mark.parametrize("workers", [0, 2], ids=lambda k: f"workers{k}")
def test_resume_from_state_continues_with_the_next_unseen_batch(corpus_dir, make_dm, workers):
    ref = batches(make_dm(corpus_dir, seq_len=L, batch_size=B).train_dataset(), 10)
    a = make_dm(corpus_dir, seq_len=L, batch_size=B, num_workers=workers)
    a.setup("fit")
    for i, batch in enumerate(take(a.train_dataloader(), 4)):
        assert torch.equal(batch["tokens"], ref[i]["tokens"])
        a.mark_consumed()  # Lightning: on_after_batch_transfer (the Trainer test covers a live loader)
    state = a.state_dict()
    assert state["windows_consumed"] == 4 * B

    b = make_dm(corpus_dir, seq_len=L, batch_size=B, num_workers=workers)
    b.load_state_dict(state)  # before setup, as when Lightning restores a checkpoint
    b.setup("fit")
    got = take(b.train_dataloader(), 6)
    assert all(torch.equal(g["tokens"], r["tokens"]) for g, r in zip(got, ref[4:], strict=True))

    # A re-iteration of the same loader (a new DataLoader epoch) also starts at the first unseen batch.
    loader = b.train_dataloader()
    take(loader, 1)
    b.mark_consumed()
    assert torch.equal(take(loader, 1)[0]["tokens"], ref[5]["tokens"])


def test_resume_with_another_world_size_and_batch_size(corpus_dir, make_dm):
    one = make_dm(corpus_dir, seq_len=L, batch_size=1)
    ref = torch.cat([b["tokens"] for b in batches(one.train_dataset(), 24)])  # global positions 0..23
    ranks = []
    for rank in range(2):  # 2 ranks x batch 2, 3 steps: positions 0..11
        d = make_dm(corpus_dir, seq_len=L, batch_size=2)
        d.setup("fit")
        d._train_ds = d.train_dataset(rank, 2)
        for _ in range(3):
            d.mark_consumed()
        ranks.append(d.state_dict())
    assert ranks[0]["windows_consumed"] == ranks[1]["windows_consumed"] == 12
    c = make_dm(corpus_dir, seq_len=L, batch_size=4)
    c.setup("fit")
    c.load_state_dict(ranks[0])
    assert torch.equal(torch.cat([b["tokens"] for b in batches(c.train_dataset(), 3)]), ref[12:24])


def test_resume_on_different_data_is_refused_or_warned(corpus_dir, make_dm, caplog):
    a = make_dm(corpus_dir, seq_len=L, batch_size=B)
    a.setup("fit")
    state = {**a.state_dict(), "windows_consumed": 6}
    b = make_dm(corpus_dir, seq_len=L, batch_size=B, seed=99)
    b.setup("fit")
    with pytest.raises(ValueError, match="seed: checkpoint 1234, now 99"):
        b.load_state_dict(state)
    c = make_dm(corpus_dir, seq_len=L, batch_size=B, seed=99, strict_resume=False)
    c.setup("fit")
    with caplog.at_level(logging.WARNING):
        c.load_state_dict(state)
    assert "resuming on different data" in caplog.text and c.windows_consumed == 6
    bad = make_dm(corpus_dir, seq_len=L, batch_size=B)
    bad.setup("fit")
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        bad.load_state_dict({**state, "tokenizer_fingerprint": "0123456789abcdef"})


def test_long_documents_are_cut_across_consecutive_windows(dm, corpus_dir):
    ds = dm.train_dataset()
    t, ref = stream_and_index(ds)
    w = len(ref)
    starts = np.asarray(ds.split.doc_starts)
    keys = ds.split.keys()
    pieces: dict[int, dict[int, int]] = {}  # doc -> {stream position: token}, from the served windows alone
    for batch in batches(ds, -(-w // B)):
        for row in batch["tokens"].numpy():
            lo = ref[row.tobytes()] * L
            docs = np.searchsorted(starts, np.arange(lo, lo + L + 1), side="right") - 1  # document of each token
            change = np.flatnonzero(np.diff(docs)) + 1
            assert (row[change - 1] == dm.eos_id).all()  # a new document starts right after an EOS
            for p, (tok, doc) in enumerate(zip(row, docs, strict=True)):
                pieces.setdefault(int(doc), {})[lo + p] = int(tok)
    ends = np.append(starts[1:], len(t))
    assert ((ends - starts) > 2 * L).sum() >= 2  # the corpus has documents split over 3+ windows
    complete = [doc for doc in range(len(keys)) if ends[doc] <= w * L + 1]  # not in the untrained tail
    for doc in complete:
        text = (corpus_dir / keys[doc]).read_bytes()  # byte tokenizer: ids are the file's bytes
        assert [pieces[doc][p] for p in range(starts[doc], ends[doc])] == [*text, dm.eos_id], keys[doc]
    assert len(complete) >= len(keys) - 2


def test_validation_windows_are_fixed_and_from_val_documents(corpus_dir, make_dm):
    d = make_dm(corpus_dir, seq_len=L, batch_size=B, val_batches=4)
    d.setup("fit")
    first = list(d.val_dataloader())
    again = list(make_dm(corpus_dir, seq_len=L, batch_size=B, val_batches=4, seed=7, num_workers=2).val_dataloader())
    assert len(first) == 4
    assert all(torch.equal(a["tokens"], b["tokens"]) for a, b in zip(first, again, strict=True))
    val_ds = d.val_dataset()
    v = val_ds.split.read(0, val_ds.split.n_tokens)
    val_keys = set(val_ds.split.keys())
    assert val_keys and not val_keys & set(d.train_dataset().split.keys())
    rows = torch.cat([b["tokens"] for b in first]).numpy()
    assert len(set(val_ds.windows.tolist())) == len(rows) == 4 * B
    for row, k in zip(rows, val_ds.windows, strict=True):
        assert np.array_equal(row, v[k * L : k * L + L + 1])


def test_validation_is_split_evenly_over_ranks(corpus_dir, make_dm):
    d = make_dm(corpus_dir, seq_len=L, batch_size=B, val_batches=4)
    d.setup("validate")
    whole = [b["tokens"] for b in d.val_dataset(0, 1)]
    per_rank = [[b["tokens"] for b in d.val_dataset(r, 2)] for r in range(2)]
    assert [len(p) for p in per_rank] == [2, 2]
    assert all(torch.equal(x, y) for x, y in zip([per_rank[g % 2][g // 2] for g in range(4)], whole, strict=True))
    three = [d.val_dataset(r, 3).num_local_batches() for r in range(3)]
    assert three == [2, 2, 2]  # equal step counts: no rank waits in a collective


class EveryThirdIsConstant:
    """A stand-in passkey mix: every third global position becomes a constant window (picklable, position-only)."""

    def __call__(self, position: int, window: np.ndarray) -> np.ndarray:
        return np.full_like(window, position % 250) if position % 3 == 0 else window


def test_a_window_mix_replaces_by_global_position_on_any_rank_worker_and_resume(dm):
    plain = dm.train_dataset(0, 1)
    mixed = dm.train_dataset(0, 1)
    mixed.mix = EveryThirdIsConstant()
    ref = torch.cat([b["tokens"] for b in batches(plain, 8)])  # positions 0 .. 8B-1
    got = torch.cat([b["tokens"] for b in batches(mixed, 8, workers=2)])
    for p in range(8 * B):
        expected = torch.full((L + 1,), p % 250) if p % 3 == 0 else ref[p]
        assert torch.equal(got[p], expected), p
    # Two ranks see exactly the positions of the one-rank stream; a stream resumed at 2B continues them.
    same = dict(seq_len=L, batch_size=B, seed=plain.seed, mix=EveryThirdIsConstant())
    ranks = [PackedWindows(plain.split, rank=r, world_size=2, **same) for r in range(2)]
    for r, ds in enumerate(ranks):
        for j, batch in enumerate(batches(ds, 2)):
            g = j * 2 + r
            assert torch.equal(batch["tokens"], got[g * B : (g + 1) * B])
    resumed = PackedWindows(plain.split, start_window=2 * B, **same)
    assert torch.equal(torch.cat([b["tokens"] for b in batches(resumed, 6)]), got[2 * B :])


def test_a_window_mix_of_the_wrong_length_is_an_error(dm):
    ds = dm.train_dataset()
    ds.mix = lambda position, window: window[:-1]
    with pytest.raises(ValueError, match=r"window mix returned shape \(64,\) at position 0, not \(65,\)"):
        ds.batch(0)


def test_the_datamodule_passes_its_training_mix_to_training_only(corpus_dir, make_dm, monkeypatch):
    d = make_dm(corpus_dir, seq_len=L, batch_size=B)
    d.setup("fit")
    assert d.train_dataset().mix is None  # the default: the corpus unchanged
    mix = EveryThirdIsConstant()
    monkeypatch.setattr(d, "training_mix", lambda: mix)
    assert d.train_dataset().mix is mix and d.val_dataset().mix is None
