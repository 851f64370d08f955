"""The cache layer: reuse by key, verification before use, automatic rebuild of a damaged folder."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datagen import BYTE, build, sha

from lighthouse.data import cache
from lighthouse.data.build import Selection
from lighthouse.data.cache import DataDirNotWritable, prepare, shard_folder
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.packing import pack_documents
from lighthouse.data.shards import DamagedShards, open_split
from lighthouse.data.tokenizer import byte_tokenizer, parse_tokenizer_spec

SRC = Path(__file__).resolve().parents[2] / "src"


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


@pytest.mark.parametrize("damage", ["noise", "truncate", "delete", "manifest", "no-manifest"])
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
    elif damage == "no-manifest":  # was: the whole corpus tokenized, then a failed rename, on every run
        (p.folder / "manifest.json").unlink()
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


def test_a_folder_without_its_manifest_is_named_when_rebuilding_is_not_allowed(corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data")
    (p.folder / "manifest.json").unlink()
    with pytest.raises(DamagedShards) as err:
        build(corpus_dir, tmp_path / "data", build=False)
    assert str(err.value) == (
        f"shard cache {p.folder} is damaged: manifest.json is missing; delete the folder and run prepare_data()"
    )


def test_a_damaged_cached_tokenizer_is_retrained_with_a_warning(corpus_dir, tmp_path, caplog):
    """Was: 'tokenizer file ... could not be loaded: EOF while parsing ...' on every run until deleted by hand."""
    bpe = parse_tokenizer_spec("bpe:300")
    first = prepare(resolve_corpus(str(corpus_dir)), bpe, tmp_path / "data", Selection(0.2), num_proc=1, progress=False)
    (saved,) = (tmp_path / "data" / "tokenizers").iterdir()
    os.truncate(saved, 1000)
    with caplog.at_level(logging.WARNING):
        again = prepare(
            resolve_corpus(str(corpus_dir)), bpe, tmp_path / "data", Selection(0.2), num_proc=1, progress=False
        )
    assert f"tokenizer file {saved} could not be loaded: " in caplog.text
    assert "retraining bpe:300 (the file is a cache)" in caplog.text
    # the same texts give the same tokenizer, so the shards are found again
    assert again.tokenizer.fingerprint == first.tokenizer.fingerprint and not again.built
    assert saved.stat().st_size > 1000 and [p.name for p in saved.parent.iterdir()] == [saved.name]


@pytest.mark.parametrize(
    ("corpus", "data_dir"),
    [("{c}", "{c}/cache"), ("{c}", "{c}"), (".", "data"), ("{c}/**/*.txt", "{c}/cache"), ("{c}/*.txt", "{c}")],
    ids=["folder", "the-corpus-itself", "cwd", "glob-into-it", "glob-root"],
)
def test_a_data_dir_the_corpus_walk_enters_is_refused(corpus_dir, tmp_path, make_dm, monkeypatch, corpus, data_dir):
    """Was: the shard keys (.txt) of each build became documents of the next, so every run rebuilt."""
    monkeypatch.chdir(corpus_dir)
    corpus, data_dir = corpus.format(c=corpus_dir), data_dir.format(c=corpus_dir)
    with pytest.raises(ValueError) as err:
        make_dm(corpus, data_dir=data_dir)
    assert str(err.value) == (
        f"data.data_dir={data_dir!r} lies in a folder that data.corpus={corpus!r} reads: the cache's own files "
        "would become training documents; move data_dir out of the corpus"
    )


@pytest.mark.parametrize(
    ("corpus", "data_dir"), [("{c}", "{c}/.cache"), ("{c}/*.txt", "{c}/cache")], ids=["dot-folder", "glob-beside"]
)
def test_a_data_dir_the_corpus_walk_skips_is_allowed(corpus_dir, make_dm, corpus, data_dir):
    corpus, data_dir = corpus.format(c=corpus_dir), data_dir.format(c=corpus_dir)
    for _ in range(2):
        dm = make_dm(corpus, data_dir=data_dir)
        dm.prepare_data()
    assert not dm._prepared.built  # the second run found the first one's shards: the listing did not change
    assert all(f["path"].startswith("doc_") for f in dm.manifest["files"])


def _no_work(*args, **kwargs):
    raise AssertionError("work started before data_dir was checked")


@pytest.mark.parametrize("tokenizer", ["bpe:300", "byte"])
def test_an_unwritable_data_dir_fails_before_any_work(corpus_dir, tmp_path, monkeypatch, tokenizer):
    """Was: '[Errno 20] Not a directory: .../tokenizers' once the BPE had been trained and was being saved."""
    monkeypatch.setattr(cache, "train_bpe", _no_work)
    monkeypatch.setattr(cache, "build_shards", _no_work)
    data_dir = tmp_path / "a_file"
    data_dir.write_text("")
    corpus = resolve_corpus(str(corpus_dir))
    with pytest.raises(DataDirNotWritable) as err:
        prepare(corpus, parse_tokenizer_spec(tokenizer), data_dir, Selection(0.2), num_proc=1, progress=False)
    if tokenizer == "byte":
        folder = shard_folder(corpus, BYTE, byte_tokenizer(), data_dir, Selection(0.2), 2**28)
        why, sub = f"the shards of corpus={str(corpus_dir)!r} must be built in {folder}", "shards"
    else:
        why, sub = f"bpe:300 must be trained and saved in {data_dir}/tokenizers", "tokenizers"
    assert str(err.value) == (
        f"{why}, but data_dir {data_dir} is not writable (Not a directory: {data_dir}/{sub}): "
        "set data.data_dir to a writable folder"
    )


# prepare() of argv's corpus and tokenizer in argv's data_dir, mounted read-only for this process alone; any
# tokenizer training or shard build is an error, so a check that comes after the work shows.
READ_ONLY_PREPARE = """
import sys
from lighthouse.data import cache
from lighthouse.data.build import Selection
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.tokenizer import parse_tokenizer_spec

def no_work(*args, **kwargs):
    raise SystemExit("work started before data_dir was checked")

cache.train_bpe = cache.build_shards = no_work
data_dir, corpus, tokenizer = sys.argv[1:]
try:
    p = cache.prepare(
        resolve_corpus(corpus), parse_tokenizer_spec(tokenizer), data_dir, Selection(0.2), num_proc=1, progress=False
    )
except OSError as e:
    print(f"{type(e).__name__}: {e}")
else:
    print(f"built={p.built}")
"""
# sh -c SCRIPT sh FOLDER COMMAND...: FOLDER becomes read-only, then COMMAND runs.
MOUNT_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


@functools.cache
def _can_mount_read_only() -> bool:
    """A user namespace with its own mounts (unshare -rm) gives a read-only data_dir without being root."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False).returncode == 0


def _prepare_read_only(data_dir: Path, corpus: Path, tokenizer: str) -> str:
    """What READ_ONLY_PREPARE prints."""
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", MOUNT_READ_ONLY, "sh", str(data_dir)]
        + [sys.executable, "-c", READ_ONLY_PREPARE, str(data_dir), str(corpus), tokenizer],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("case", ["complete", "damaged", "bpe-untrained"])
def test_a_read_only_data_dir(corpus_dir, tmp_path, case):
    """Was: a damaged cache failed with 'OSError ... Read-only file system: <folder> -> .<folder>.damaged-...',
    and a BPE tokenizer was trained before the read-only data_dir failed to save it."""
    if not _can_mount_read_only():
        pytest.skip("needs unshare -rm (a user namespace with its own mounts)")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if case == "bpe-untrained":
        assert _prepare_read_only(data_dir, corpus_dir, "bpe:300") == (
            f"DataDirNotWritable: bpe:300 must be trained and saved in {data_dir}/tokenizers, but data_dir "
            f"{data_dir} is read-only: set data.data_dir to a writable folder"
        )
        return
    p = build(corpus_dir, data_dir)
    if case == "complete":  # everything needed is there: read, never written
        assert _prepare_read_only(data_dir, corpus_dir, "byte") == "built=False"
        return
    _overwrite_with_in_range_noise(p.folder / "train-00000.bin")
    assert _prepare_read_only(data_dir, corpus_dir, "byte") == (
        f"DataDirNotWritable: shard cache {p.folder} is damaged: train-00000.bin does not match its sha256 "
        f"(overwritten or corrupted); it must be rebuilt, but data_dir {data_dir} is read-only: set data.data_dir "
        "to a writable folder"
    )
