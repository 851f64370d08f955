"""The shard format: reader access, tokenizer refusal, and checksums that match the files written."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
from datagen import build, make_text, sha

from lighthouse.data.shards import SPLITS, DamagedShards, SplitReader, open_split, size_problems, verify
from lighthouse.data.tokenizer import train_bpe


def test_shards_refuse_another_tokenizer(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data")
    other = train_bpe([make_text(random.Random(0), 200)], 300)
    with pytest.raises(ValueError, match=r"tokenized with tokenizer 'byte' \(fingerprint [0-9a-f]{16}"):
        open_split(p.folder, "train", other)


def test_reader_is_picklable_and_bounds_checked(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data")
    r = open_split(p.folder, "train", p.tokenizer)
    r.read(0, 10)
    r2: SplitReader = pickle.loads(pickle.dumps(r))
    assert np.array_equal(r2.read(0, 10), r.read(0, 10))
    with pytest.raises(IndexError):
        r.read(0, r.n_tokens + 1)


def test_manifest_records_size_and_sha256_of_every_file(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data", shard_tokens=1000)
    recorded = {n: e for s in SPLITS for n, e in p.manifest["splits"][s]["checksums"].items()}
    on_disk = {f.name for f in p.folder.iterdir()} - {"manifest.json"}
    assert set(recorded) == on_disk and len(on_disk) > 6  # several shards per split, plus docs and keys
    for name, entry in recorded.items():
        path = p.folder / name
        assert entry == {"bytes": path.stat().st_size, "sha256": sha(path)}, name
    assert verify(p.folder, p.manifest) == [] and size_problems(p.folder, p.manifest) == []


def test_a_truncated_shard_is_a_clear_error_naming_the_file(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data")
    shard = p.folder / "train-00000.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    # Without the size check numpy raises "mmap length is greater than file size" at the first read.
    with pytest.raises(DamagedShards, match=r"train-00000.bin has \d+ bytes, the manifest says \d+ \(truncated"):
        open_split(p.folder, "train", p.tokenizer)


def test_keys_of_files_named_with_other_line_breaks_line_up_with_the_documents(tmp_path):
    """A key is the file's name, with "\\n" replaced (the keys file's separator); "\\r" and "\\u2028" stay in it. The
    reader split the keys file as text lines, so those names broke one key in two and a build crashed (IndexError
    moving a document to validation)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = ["carriage\rreturn.txt", "line\u2028separator.txt", "plain.txt", "form\x0cfeed.txt"]
    for i, name in enumerate(names):
        (corpus / name).write_text(make_text(random.Random(i), 300))
    p = build(corpus, tmp_path / "data", val_fraction=0.25)
    keys = [k for split in SPLITS for k in open_split(p.folder, split, p.tokenizer).keys()]
    assert sorted(keys) == sorted(names)
    for split in SPLITS:
        reader = open_split(p.folder, split, p.tokenizer)
        assert len(reader.keys()) == reader.meta["documents"]
