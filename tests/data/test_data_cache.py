"""The cache layer: reuse by key, verification before use, automatic rebuild of a damaged folder."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from datagen import build, sha

from lighthouse.data.build import Selection
from lighthouse.data.cache import prepare
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.packing import pack_documents
from lighthouse.data.shards import DamagedShards, open_split
from lighthouse.data.tokenizer import parse_tokenizer_spec


def test_cache_is_reused_and_keyed_by_tokenizer(corpus_dir, tmp_path):
    first = build(corpus_dir, tmp_path / "data")
    mtime = (first.folder / "train-00000.bin").stat().st_mtime_ns
    again = build(corpus_dir, tmp_path / "data")
    assert not again.built and again.folder == first.folder
    assert (first.folder / "train-00000.bin").stat().st_mtime_ns == mtime
    bpe = parse_tokenizer_spec("bpe:300")
    other = prepare(resolve_corpus(str(corpus_dir)), bpe, tmp_path / "data", Selection(0.2), num_proc=1, progress=False)
    assert other.built and other.folder != first.folder
    (corpus_dir / "doc_000.txt").write_text("changed")
    assert build(corpus_dir, tmp_path / "data").built  # the listing (size/mtime) changed


def _overwrite_with_in_range_noise(path, vocab: int = 257) -> None:
    noise = np.random.default_rng(0).integers(0, vocab, size=path.stat().st_size // 2, dtype=np.uint16)
    path.write_bytes(noise.astype("<u2").tobytes())  # same size, every id valid: only the hash can tell


def _packed_train(corpus_dir, reader):
    return pack_documents([list((corpus_dir / k).read_bytes()) for k in reader.keys()], eos_id=256)[0]


@pytest.mark.parametrize("damage", ["noise", "truncate", "delete", "manifest"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(corpus_dir, tmp_path, caplog, damage):
    p = build(corpus_dir, tmp_path / "data")
    shard = p.folder / "train-00000.bin"
    original = sha(shard)
    if damage == "noise":
        _overwrite_with_in_range_noise(shard)
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif damage == "delete":
        (p.folder / "val-docs.npy").unlink()
    else:
        (p.folder / "manifest.json").write_text('{"format": 2, "spl')
    with caplog.at_level(logging.WARNING):
        again = build(corpus_dir, tmp_path / "data")
    assert again.built and again.folder == p.folder  # rebuilt in place, under the same key
    assert f"shard cache {p.folder} is damaged" in caplog.text and "rebuilding it from the corpus" in caplog.text
    assert sha(shard) == original and again.manifest["data_fingerprint"] == p.manifest["data_fingerprint"]
    train = open_split(again.folder, "train", again.tokenizer)
    assert np.array_equal(train.read(0, train.n_tokens), _packed_train(corpus_dir, train))
    assert [f.name for f in (tmp_path / "data" / "shards").iterdir()] == [p.folder.name]  # nothing left aside


def test_noise_names_the_file_when_rebuilding_is_not_allowed(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data")
    _overwrite_with_in_range_noise(p.folder / "val-00000.bin")
    with pytest.raises(DamagedShards, match=r"val-00000.bin does not match its sha256 .*delete the folder"):
        build(corpus_dir, tmp_path / "data", build=False)


def test_without_checksums_only_sizes_are_checked(corpus_dir, tmp_path):
    """What the non-zero ranks do (prepare_data verified on this node): no hashing, but a size check at open."""
    p = build(corpus_dir, tmp_path / "data")
    _overwrite_with_in_range_noise(p.folder / "train-00000.bin")
    found = build(corpus_dir, tmp_path / "data", checksums=False)
    assert not found.built
    (p.folder / "train-00000.bin").write_bytes(b"\0\0")
    with pytest.raises(DamagedShards, match="train-00000.bin has 2 bytes"):
        open_split(found.folder, "train", found.tokenizer)
