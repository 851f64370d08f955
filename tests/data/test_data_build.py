"""Building shards: exact content, files + hashes, the split and its fallbacks, caps, parallel build, bad input."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import types
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from datagen import BYTE, SIZES, build, sha, write_corpus

from lighthouse.data import build as build_module
from lighthouse.data.build import Selection
from lighthouse.data.cache import prepare
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.packing import TAIL_SUFFIX, pack_documents, tail_length
from lighthouse.data.shards import open_split


def test_shards_hold_exactly_the_packed_documents(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data", shard_tokens=1000)  # several shards: windows cross them
    for split in ("train", "val"):
        reader = open_split(p.folder, split, p.tokenizer)
        keys = reader.keys()
        docs = [list((corpus_dir / k).read_bytes()) for k in keys]
        stream, starts = pack_documents(docs, eos_id=256)
        assert np.array_equal(reader.read(0, reader.n_tokens), stream)
        assert np.array_equal(np.asarray(reader.doc_starts), starts)
        assert len(reader.meta["shards"]) == -(-len(stream) // 1000)
        assert np.array_equal(reader.read(990, 1010), stream[990:1010])  # across a shard boundary
    assert keys == sorted(keys)  # corpus order: sorted relative paths


def test_manifest_lists_exactly_the_files_read_with_hashes(tmp_path):
    corpus = write_corpus(tmp_path / "c", [5, 0, 8, 3, 9, 4])
    (corpus / "doc_002.txt").write_bytes(b"caf\xe9 latin-1\n")  # not UTF-8
    (corpus / "doc_003.txt").write_bytes(b"\x00\x01\x02binary")
    (corpus / "notes.md").write_text("not a corpus file")  # directories take .txt/.jsonl/.parquet only
    p = build(corpus, tmp_path / "data", max_documents=2)
    files = p.manifest["files"]
    # doc_000 (kept), doc_001 (empty), doc_002/003 (skipped), doc_004 (kept: the cap); doc_005 never read
    assert [f["path"] for f in files] == [f"doc_00{i}.txt" for i in range(5)]
    assert all(f["sha256"] == sha(corpus / f["path"]) for f in files)
    assert [f["documents"] for f in files] == [1, 0, 0, 0, 1]
    assert files[2]["skipped"].startswith("not UTF-8") and files[3]["skipped"].startswith("binary")
    assert files[1]["skipped_records"] == {"empty_document": 1}
    assert p.manifest["skipped"] == {"files": 2, "records": {"empty_document": 1}}
    assert p.manifest["tokenizer"]["fingerprint"] == p.tokenizer.fingerprint
    n_tokens = sum(m["tokens"] for m in p.manifest["splits"].values())
    assert (
        n_tokens
        == sum(f["tokens"] for f in files)
        == (corpus / "doc_000.txt").stat().st_size + (corpus / "doc_004.txt").stat().st_size + 2
    )


def test_skips_are_logged(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "c", [5, 6, 7])
    (corpus / "doc_001.txt").write_bytes(b"\xff\xfe bad")
    with caplog.at_level(logging.WARNING):
        build(corpus, tmp_path / "data")
    assert "skipped 1 unreadable files" in caplog.text and "doc_001.txt: not UTF-8" in caplog.text


def test_max_bytes_keeps_the_crossing_document(corpus_dir, tmp_path):
    first = [(corpus_dir / f"doc_{i:03d}.txt").stat().st_size for i in range(3)]
    p = build(corpus_dir, tmp_path / "data", max_bytes=first[0] + 1)
    assert [f["documents"] for f in p.manifest["files"]] == [1, 1]


def test_split_is_by_document_and_stable(corpus_dir, tmp_path):
    a = build(corpus_dir, tmp_path / "a")
    split_a = {k: s for s in ("train", "val") for k in open_split(a.folder, s, a.tokenizer).keys()}
    assert sorted(split_a) == sorted(f"doc_{i:03d}.txt" for i in range(len(SIZES)))  # each doc in one split
    assert 0 < sum(s == "val" for s in split_a.values()) < len(SIZES)
    write_corpus(corpus_dir, [50] * 30, seed=5, prefix="more")  # the corpus grows
    b = build(corpus_dir, tmp_path / "b")
    split_b = {k: s for s in ("train", "val") for k in open_split(b.folder, s, b.tokenizer).keys()}
    assert {k: split_b[k] for k in split_a} == split_a


def test_tiny_corpus_still_gets_a_validation_document(tmp_path):
    corpus = write_corpus(tmp_path / "c", [10, 10, 10], prefix="x")  # x_002.txt has the smallest hash
    p = build(corpus, tmp_path / "data", val_fraction=1e-9)
    assert p.manifest["split"]["val_fallback"] == "x_002.txt"
    assert p.manifest["splits"]["val"]["documents"] == 1 and p.manifest["split"]["val_fallback"]
    val = open_split(p.folder, "val", p.tokenizer)
    train = open_split(p.folder, "train", p.tokenizer)
    assert val.keys() == [p.manifest["split"]["val_fallback"]] and len(train.keys()) == 2
    assert [f["path"] for f in p.manifest["files"] if f["val_documents"]] == val.keys()
    stream, _ = pack_documents([list((corpus / k).read_bytes()) for k in train.keys()], 256)
    assert np.array_equal(train.read(0, train.n_tokens), stream)


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
def test_a_corpus_of_one_document_holds_out_its_tail(tmp_path, fmt):
    text = "".join(f"line {i} of the only document\n" for i in range(400))
    corpus = tmp_path / "c"
    corpus.mkdir()
    if fmt == "txt":
        (corpus / "only.txt").write_text(text)
        key = "only.txt"
    else:
        (corpus / "only.jsonl").write_text(json.dumps({"text": text}) + "\n")
        key = "only.jsonl#0"
    p = build(corpus, tmp_path / "data", val_fraction=0.1)
    n_tail = tail_length(len(text), 0.1)
    assert n_tail == round(0.1 * len(text))  # the byte tokenizer: one token per (ASCII) character
    assert p.manifest["split"]["val_tail"] == {"key": key, "tokens": n_tail}
    train, val = (open_split(p.folder, s, p.tokenizer) for s in ("train", "val"))
    assert train.keys() == [key] and val.keys() == [key + TAIL_SUFFIX]
    whole = list(text.encode())
    assert np.array_equal(train.read(0, train.n_tokens), pack_documents([whole[:-n_tail]], 256)[0])
    assert np.array_equal(val.read(0, val.n_tokens), pack_documents([whole[-n_tail:]], 256)[0])
    (entry,) = p.manifest["files"]
    assert (entry["documents"], entry["val_documents"], entry["tokens"]) == (1, 1, len(whole) + 2)


def test_one_document_tail_changes_no_other_fingerprint(corpus_dir, tmp_path):
    """The tail rule applies to one-document corpora only: other manifests (and the data_fingerprint their
    checkpoints hold) keep the fields they had."""
    p = build(corpus_dir, tmp_path / "data")
    assert p.manifest["split"]["val_tail"] is None
    two = write_corpus(tmp_path / "two", [300, 300])
    assert build(two, tmp_path / "data2", val_fraction=0.1).manifest["split"]["val_tail"] is None


def test_tokenization_workers_import_no_torch():
    """Workers import build.py (and what it imports): starting one must not pay for torch and Lightning."""
    code = "import sys, lighthouse.data.build; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    src = str(Path(__file__).resolve().parents[2] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": src}, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_parallel_build_equals_serial(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "useful_processes", lambda n, total, fast: n)  # force the pool on a tiny corpus
    serial = build(corpus_dir, tmp_path / "s", max_documents=30)
    parallel = build(corpus_dir, tmp_path / "p", max_documents=30, num_proc=2)
    assert parallel.manifest["build"]["processes"] == 2
    assert parallel.manifest["data_fingerprint"] == serial.manifest["data_fingerprint"]
    for f in sorted(p.name for p in serial.folder.iterdir() if p.name != "manifest.json"):
        assert (serial.folder / f).read_bytes() == (parallel.folder / f).read_bytes(), f


_encode_task = build_module._encode_task


def _die_on_doc_005(task, **kwargs):
    if task[1].rel == "doc_005.txt":
        os._exit(1)  # a worker killed mid-task (out of memory, a signal)
    return _encode_task(task, **kwargs)


def test_a_dead_worker_is_an_error_not_a_hang(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "useful_processes", lambda n, total, fast: n)
    monkeypatch.setattr(build_module, "_encode_task", _die_on_doc_005)
    with pytest.raises(BrokenProcessPool):
        build(corpus_dir, tmp_path / "data", num_proc=2)
    assert not list((tmp_path / "data" / "shards").iterdir())


def test_jsonl_records_compressed_and_bad_lines(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    lines = [
        json.dumps({"body": "first record"}),
        "{not json",
        "",
        json.dumps({"other": 1}),
        json.dumps({"body": ""}),
        json.dumps({"body": 7}),
        json.dumps({"body": "second \ud800 bad"}),
        json.dumps({"body": "third record"}),
    ]
    with gzip.open(corpus / "part.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    p = prepare(
        resolve_corpus(str(corpus), text_field="body"),
        BYTE,
        tmp_path / "data",
        Selection(1e-9),
        num_proc=1,
        progress=False,
    )
    (entry,) = p.manifest["files"]
    assert entry["path"] == "part.jsonl.gz" and entry["sha256"] == sha(corpus / "part.jsonl.gz")
    assert entry["documents"] == 2
    assert entry["skipped_records"] == {
        "bad_json_line": 1,
        "missing_field": 1,
        "empty_document": 1,
        "non_string_field": 1,
        "invalid_unicode": 1,
    }
    keys = sorted(k for s in ("train", "val") for k in open_split(p.folder, s, p.tokenizer).keys())
    assert keys == ["part.jsonl.gz#0", "part.jsonl.gz#7"]  # record keys: line numbers


def test_wrong_text_field_says_so(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text(json.dumps({"content": "hello"}) + "\n")
    with pytest.raises(ValueError, match=r"produced no documents.*missing_field.*text_field='text'"):
        build(corpus, tmp_path / "data")


def test_everything_unreadable_says_why(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"\xff\xfe\x00")
    (corpus / "b.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"produced no documents.*1 skipped.*empty_document"):
        build(corpus, tmp_path / "data")
    assert not list((tmp_path / "data" / "shards").iterdir())  # no partial cache left behind


def test_parquet_records(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    corpus = tmp_path / "c"
    corpus.mkdir()
    pq.write_table(pa.table({"text": ["alpha", None, "beta"]}), corpus / "a.parquet")
    p = build(corpus, tmp_path / "data", val_fraction=1e-9)
    assert p.manifest["files"][0]["documents"] == 2


def test_zstd_text_and_glob_corpus(tmp_path):
    zstd = pytest.importorskip("zstandard")
    corpus = tmp_path / "c" / "sub"
    corpus.mkdir(parents=True)
    (corpus / "a.txt.zst").write_bytes(zstd.ZstdCompressor().compress("zstd text é\n".encode()))
    (corpus / "b.log").write_text("a glob takes any file as text\n")
    p = build(tmp_path / "c" / "**" / "*", tmp_path / "data", val_fraction=1e-9)
    assert [(f["path"], f["documents"]) for f in p.manifest["files"]] == [
        ("sub/a.txt.zst", 1),
        ("sub/b.log", 1),
    ]
    tokens = sum(m["tokens"] for m in p.manifest["splits"].values())
    assert tokens == len("zstd text é\n".encode()) + len("a glob takes any file as text\n") + 2


@pytest.mark.parametrize("num_proc", [1, 2], ids=lambda n: f"proc{n}")
def test_hf_streaming_with_a_stand_in_datasets_module(tmp_path, monkeypatch, num_proc):
    calls, pulled = [], []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        for i in range(10**6):  # "unbounded"; i % 7 == 0 is empty text, skipped
            pulled.append(i)
            yield {"text": f"record {i} " * (i % 7)}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = resolve_corpus("hf:org/name:cfg")
    p = prepare(spec, BYTE, tmp_path / "data", Selection(0.1, max_documents=1000), num_proc=num_proc, progress=False)
    assert calls == [("org/name", "cfg", "train", True)]
    assert sum(s["documents"] for s in p.manifest["splits"].values()) == 1000
    keys = [k for s in ("train", "val") for k in open_split(p.folder, s, p.tokenizer).keys()]
    assert sorted(keys, key=int)[-1] == "1166"  # the 1000th non-empty record
    # Read in chunks of 512 records: 3 hold the 1000 documents. A pool has at most 2 * num_proc chunks in
    # flight, so it has read 2 * num_proc - 1 chunks past the one it is returning.
    assert len(pulled) == 512 * (3 if num_proc == 1 else 3 + 2 * num_proc - 1)
    assert p.manifest["skipped"]["records"] == {"empty_document": len(range(0, 3 * 512, 7))}
    assert p.manifest["corpus"]["hf"] == {"name": "org/name", "config": "cfg", "split": "train"}


def test_hf_without_datasets_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    spec = resolve_corpus("hf:some/dataset")
    with pytest.raises(ImportError, match="pip install datasets"):
        prepare(spec, BYTE, tmp_path / "data", Selection(0.1), num_proc=1, progress=False)
