"""Recall windows: pairs inserted into real text at binned distances, keys disjoint, deterministic, resumable."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
from array_source import ArraySource

from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.recall import (
    KEY_HEX,
    RecallFormat,
    RecallMix,
    eval_windows,
    insert_pairs,
    is_eval_key,
    key_set,
    rng_for,
)
from lighthouse.data.tokenizer import byte_tokenizer, train_bpe

TOK = byte_tokenizer()
FMT = RecallFormat.from_tokenizer(TOK)


def filler(n: int, seed: int = 0) -> np.ndarray:
    """Byte tokens of lowercase words and newlines: no 'KV_' of its own, and every window different."""
    rng = np.random.default_rng(seed)
    return rng.choice(np.frombuffer(b"abcdefghij klmnop\n", dtype=np.uint8), size=n).astype(np.int64)


def check_window(fmt, w, text, pairs):
    """The invariants of one recall window (returns the decoded text)."""
    bins = fmt.bins(len(text))
    k = fmt.value_digits
    decoded = TOK.decode(w.tokens)
    assert len(w.tokens) == len(text) and len(set(w.keys)) == pairs
    for i, key in enumerate(w.keys):
        value = fmt.digit_ids[w.values[i]]
        a, q = int(w.assign_pos[i]), int(w.query_pos[i])
        # the value is in the window before its query, and the query reads it back
        assert a + k <= q and np.array_equal(w.tokens[a : a + k], value) and np.array_equal(w.tokens[q : q + k], value)
        digits = "".join(map(str, w.values[i]))
        assert TOK.decode(w.tokens[a - 4 - KEY_HEX - 3 : a + k + 1]) == f'KV_{key} = "{digits}"'
        assert TOK.decode(w.tokens[q - 11 - KEY_HEX - 4 : q + k + 1]) == f'assert KV_{key} == "{digits}"'
        # the distance is the one drawn, inside its bin
        b = bins[w.bins[i]]
        assert q - a == w.distances[i] and b.lo <= w.distances[i] < b.hi
    # pairs spread evenly over the bins
    per_bin = np.bincount(w.bins, minlength=len(bins))
    assert per_bin.max() - per_bin.min() <= 1
    # the rest is the real text, in order, unchanged
    assert w.inserted.sum() == pairs * fmt.pair_length
    assert np.array_equal(w.tokens[~w.inserted], text[: len(text) - pairs * fmt.pair_length])
    return decoded


@pytest.mark.parametrize("seq_len,pairs,n_bins", [(128, 1, 1), (512, 4, 1), (1024, 8, 1), (5000, 8, 3), (20000, 16, 4)])
def test_pairs_are_inserted_before_their_queries_at_binned_distances_into_unchanged_text(seq_len, pairs, n_bins):
    assert len(FMT.bins(seq_len + 1)) == n_bins
    seen_bins = set()
    for trial in range(6):
        text = filler(seq_len + 1, trial)
        w = insert_pairs(FMT, text, rng_for("test", seq_len, trial), pairs, evaluation=trial % 2 == 0)
        check_window(FMT, w, text, pairs)
        seen_bins |= set(w.bins.tolist())
    assert seen_bins == set(range(n_bins))


def test_the_longest_bin_ends_at_seq_len_and_reaches_the_window_s_longest_distance():
    bins = FMT.bins(32769)
    assert [b.label for b in bins] == ["64-1k", "1k-4k", "4k-16k", "16k-32k"]
    assert bins[0].lo == 64 and bins[-1].hi == FMT.longest(32769) + 1
    assert [b.lo for b in bins[1:]] == [b.hi for b in bins[:-1]]


def test_evaluation_and_training_keys_are_disjoint_and_no_evaluation_key_reaches_a_training_window():
    train, held = set(key_set(False)), set(key_set(True))
    assert not train & held and len(train | held) == 16**KEY_HEX and 0.08 < len(held) / 16**KEY_HEX < 0.12
    mix = RecallMix(1.0, FMT, 2048, seed=3, pairs=8)
    found = set()
    for position in range(300):
        text = TOK.decode(mix(position, filler(2049, position)))
        found |= set(re.findall(r"KV_([0-9a-f]{4})", text))
    assert len(found) > 1500 and not any(is_eval_key(k) for k in found)
    recall = eval_windows(TOK, ArraySource(filler(50000)), 2048, n_windows=20, pairs=8)
    keys = {k for w in recall.windows for k in w.keys}
    assert len(keys) > 100 and all(is_eval_key(k) for k in keys)


def test_the_mix_is_a_pure_function_of_seed_and_position_with_the_requested_share():
    mix = RecallMix(0.3, FMT, 512, seed=7, pairs=2)
    windows = [filler(513, p) for p in range(400)]
    first = [mix(p, w) for p, w in enumerate(windows)]
    again = pickle.loads(pickle.dumps(RecallMix(0.3, FMT, 512, seed=7, pairs=2)))  # as a DataLoader worker gets it
    assert all(np.array_equal(a, again(p, w)) for p, (a, w) in enumerate(zip(first, windows, strict=True)))
    changed = [a is not w for a, w in zip(first, windows, strict=True)]
    assert 0.22 < np.mean(changed) < 0.38
    other_seed = RecallMix(0.3, FMT, 512, seed=8, pairs=2)
    assert any(not np.array_equal(a, other_seed(p, w)) for p, (a, w) in enumerate(zip(first, windows, strict=True)))
    for p, w in enumerate(windows):  # a plain window is the very array it was given
        doc = mix.document(p, w)
        if doc is not None:
            check_window(FMT, doc, w, 2)


def test_evaluation_windows_are_fixed_and_made_of_the_validation_text():
    source = ArraySource(filler(30000, 5))
    a = eval_windows(TOK, source, 1024, n_windows=6, pairs=4, seed=0)
    b = eval_windows(TOK, source, 1024, n_windows=6, pairs=4, seed=0)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(a.windows, b.windows, strict=True))
    for i, w in enumerate(a.windows):
        start = i * source.n_tokens // 6
        check_window(FMT, w, source.tokens[start : start + 1025], 4)


def test_bpe_keys_and_digits_are_one_token_each_whatever_the_merges():
    bpe = train_bpe(["KV_3f9a = '80417' and 3f9a 80417 00 11 ff aa " * 40, "assert x == '12345'\n" * 40], 400)
    fmt = RecallFormat.from_tokenizer(bpe)
    text = np.asarray(bpe.encode("plain words and more words\n" * 200), dtype=np.int64)[:1025]
    w = insert_pairs(fmt, text, rng_for("bpe"), 4, evaluation=False)
    assert np.array_equal(w.tokens[~w.inserted], text[: 1025 - 4 * fmt.pair_length])
    for i, key in enumerate(w.keys):
        digits = "".join(map(str, w.values[i]))
        assert f'KV_{key} = "{digits}"' in bpe.decode(w.tokens) and f'assert KV_{key} == "{digits}"' in bpe.decode(
            w.tokens
        )
        assert np.array_equal(w.tokens[w.query_pos[i] : w.query_pos[i] + 5], [bpe.encode(d)[0] for d in digits])


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(recall_fraction=1.5), "data.recall_fraction=1.5 is invalid: must be a number in [0, 1]"),
        (dict(recall_fraction=-0.1), "recall_fraction=-0.1"),
        (dict(recall_pairs=0), "recall_pairs=0 is invalid: must be an integer in [1, 64]"),
        (dict(recall_pairs=65), "recall_pairs=65"),
        (dict(recall_fraction=0.5, seq_len=100), "data.recall_pairs=8 is invalid with data.seq_len=100"),
        (dict(recall_fraction=0.5, seq_len=512, recall_pairs=8), "fill more than half"),
    ],
)
def test_bad_recall_settings_are_refused_naming_the_field(corpus_dir, tmp_path, bad, message):
    with pytest.raises(ValueError) as e:
        LMDataModule(corpus=str(corpus_dir), data_dir=str(tmp_path), **bad)
    assert message in str(e.value)


def test_recall_training_stream_resumes_exactly_leaves_passkey_windows_and_validation_alone(make_dm, corpus_dir):
    settings = dict(seq_len=256, recall_fraction=0.5, recall_pairs=2, passkey_fraction=0.3, val_fraction=0.3)
    dm = make_dm(corpus_dir, **settings)
    dm.setup("fit")
    plain = make_dm(corpus_dir, **{**settings, "recall_fraction": 0.0, "passkey_fraction": 0.0})
    plain.setup("fit")
    stream, raw = dm.train_dataset(), plain.train_dataset()
    passkey = dm.training_mix().mixes[0]
    kinds = []
    for p in range(60):
        window, text = stream.window(p), raw.window(p)
        if passkey.document(p) is not None:
            kinds.append("passkey")
            assert np.array_equal(window, passkey.document(p))
        elif np.array_equal(window, text):
            kinds.append("plain")
        else:
            kinds.append("recall")
            assert "KV_" in TOK.decode(window) and "KV_" not in TOK.decode(text)
    assert {"passkey", "plain", "recall"} <= set(kinds)
    # a resumed module (another instance, started later in the stream) serves the same windows
    resumed = make_dm(corpus_dir, **settings)
    resumed.load_state_dict({**dm.state_dict(), "windows_consumed": 20})
    resumed.setup("fit")
    later = resumed.train_dataset()
    assert all(np.array_equal(later.window(p), stream.window(p)) for p in range(20, 60))
    assert np.array_equal(later.batch(0)["tokens"].numpy()[0], stream.window(20))
    # validation is never mixed
    val, plain_val = dm.val_dataset(), plain.val_dataset()
    assert all(np.array_equal(val.window(p), plain_val.window(p)) for p in range(len(val.windows)))
