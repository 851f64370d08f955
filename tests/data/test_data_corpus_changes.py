"""Corpus changes that the cache key (paths, sizes, mtimes) cannot see: an edit that restores size and mtime,
and a file skipped as unreadable at build that became readable. Both rebuild the shards and say which files."""

from __future__ import annotations

import json
import logging
import os

import pytest
from datagen import BYTE, build

from lighthouse.data.build import Selection
from lighthouse.data.cache import prepare
from lighthouse.data.corpus import resolve_corpus

_REBUILD = "rebuilding"


def _same_size_edit(path) -> None:
    """Change one byte of ``path`` and put its size and mtime back, as ``touch -r`` would."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[0] = ord("Z") if data[0] != ord("Z") else ord("Y")
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _doc_tokens(prepared, key: str) -> bytes:
    from lighthouse.data.shards import open_split

    for split in ("train", "val"):
        reader = open_split(prepared.folder, split, prepared.tokenizer)
        keys = reader.keys()
        if key in keys:
            i = keys.index(key)
            starts = [int(s) for s in reader.doc_starts] + [reader.n_tokens]
            return bytes(int(t) for t in reader.read(starts[i], starts[i + 1] - 1))
    raise KeyError(key)


def test_an_unchanged_corpus_reuses_the_shards(corpus_dir, tmp_path, caplog):
    first = build(corpus_dir, tmp_path / "data")
    shard_mtime = (first.folder / "train-00000.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="lighthouse.data"):
        again = build(corpus_dir, tmp_path / "data")
    assert not again.built and again.folder == first.folder
    assert (first.folder / "train-00000.bin").stat().st_mtime_ns == shard_mtime
    assert _REBUILD not in caplog.text


def test_an_edit_with_size_and_mtime_restored_rebuilds_naming_the_file(corpus_dir, tmp_path, caplog):
    first = build(corpus_dir, tmp_path / "data")
    edited = corpus_dir / "doc_003.txt"
    _same_size_edit(edited)
    with caplog.at_level(logging.WARNING):
        again = build(corpus_dir, tmp_path / "data")
    assert again.built and again.folder == first.folder  # same listing, so the same key: rebuilt in place
    lines = [r.getMessage() for r in caplog.records if _REBUILD in r.getMessage()]
    assert len(lines) == 1 and "1 corpus file changed" in lines[0] and "doc_003.txt" in lines[0], lines
    assert again.manifest["data_fingerprint"] != first.manifest["data_fingerprint"]
    assert _doc_tokens(again, "doc_003.txt") == edited.read_bytes()
    assert [f.name for f in (tmp_path / "data" / "shards").iterdir()] == [first.folder.name]  # nothing left aside
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert not build(corpus_dir, tmp_path / "data").built  # and the rebuilt folder is then reused
    assert _REBUILD not in caplog.text


def test_many_changed_files_are_counted_and_a_few_named(corpus_dir, tmp_path, caplog):
    build(corpus_dir, tmp_path / "data")
    for i in range(7):
        _same_size_edit(corpus_dir / f"doc_{i + 1:03d}.txt")
    with caplog.at_level(logging.WARNING):
        assert build(corpus_dir, tmp_path / "data").built
    (line,) = [r.getMessage() for r in caplog.records if _REBUILD in r.getMessage()]
    assert "7 corpus files changed" in line and "doc_001.txt" in line and "doc_007.txt" not in line, line
    assert "and 4 more" in line, line


def test_without_rebuilding_a_changed_corpus_is_an_error_naming_the_file(corpus_dir, tmp_path):
    build(corpus_dir, tmp_path / "data")
    _same_size_edit(corpus_dir / "doc_009.txt")
    with pytest.raises(ValueError, match=r"doc_009.txt.*delete the folder"):
        build(corpus_dir, tmp_path / "data", build=False)


def _fifo_during_build(path):
    """Replace ``path`` by a FIFO (root cannot read it either: the reader skips what is not a regular file) and
    return a function that puts the file back with its bytes, size and mtime, so the listing is unchanged."""
    data, st = path.read_bytes(), path.stat()
    path.unlink()
    os.mkfifo(path)

    def restore() -> None:
        path.unlink()
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    return restore


def test_a_skipped_file_that_became_readable_rebuilds(corpus_dir, tmp_path, caplog):
    """The listing sees a regular file; the build finds a FIFO there (what a file unreadable at build looks like
    to root, which chmod cannot stop) and skips it; the file is then readable again with the same size and
    mtime, so the key is the same and only the retry can see it."""
    listed = resolve_corpus(str(corpus_dir))
    restore = _fifo_during_build(corpus_dir / "doc_009.txt")
    first = prepare(listed, BYTE, tmp_path / "data", Selection(0.2), num_proc=1, progress=False)
    (entry,) = [f for f in first.manifest["files"] if f["path"] == "doc_009.txt"]
    assert entry["skipped"].startswith("unreadable") and entry["sha256"] is None
    with caplog.at_level(logging.WARNING):  # still a FIFO (the same listing): still skipped, nothing to redo
        assert not prepare(listed, BYTE, tmp_path / "data", Selection(0.2), num_proc=1, progress=False).built
    assert _REBUILD not in caplog.text
    restore()
    with caplog.at_level(logging.WARNING):
        again = build(corpus_dir, tmp_path / "data")
    assert again.built and again.folder == first.folder
    (line,) = [r.getMessage() for r in caplog.records if _REBUILD in r.getMessage()]
    assert "1 skipped file now readable" in line and "doc_009.txt" in line, line
    (entry,) = [f for f in again.manifest["files"] if f["path"] == "doc_009.txt"]
    assert "skipped" not in entry and entry["documents"] == 1
    assert _doc_tokens(again, "doc_009.txt") == (corpus_dir / "doc_009.txt").read_bytes()


def _refuse_one_file(monkeypatch, name: str) -> None:
    """The build's reader gets EACCES for ``name``, as a non-root user does for a chmod 000 file."""
    from lighthouse.data import documents

    real = documents.open_regular

    def open_regular(path):
        if os.path.basename(path) == name:
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(documents, "open_regular", open_regular)


@pytest.mark.parametrize("how", ["monkeypatched", "chmod"])
def test_a_file_made_readable_again_rebuilds(corpus_dir, tmp_path, caplog, monkeypatch, how):
    """A file the build could not open (permissions) and that is readable later: chmod changes the ctime only,
    so the listing key is the same. As root, chmod 000 does not stop a read: the reader is patched instead."""
    locked = corpus_dir / "doc_011.txt"
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root reads a chmod 000 file (the monkeypatched case covers it)")
        locked.chmod(0)
    else:
        _refuse_one_file(monkeypatch, locked.name)
    try:
        first = build(corpus_dir, tmp_path / "data")
    finally:
        locked.chmod(0o644)
        monkeypatch.undo()
    (entry,) = [f for f in first.manifest["files"] if f["path"] == locked.name]
    assert "PermissionError" in entry["skipped"]
    with caplog.at_level(logging.WARNING):
        again = build(corpus_dir, tmp_path / "data")
    assert again.built and again.folder == first.folder
    (line,) = [r.getMessage() for r in caplog.records if _REBUILD in r.getMessage()]
    assert "1 skipped file now readable" in line and locked.name in line, line
    assert _doc_tokens(again, locked.name) == locked.read_bytes()


@pytest.mark.parametrize("edit", ["old_format", "files_malformed", "entry_malformed"])
def test_an_old_or_malformed_manifest_is_rebuilt_not_crashed_on(corpus_dir, tmp_path, caplog, edit):
    first = build(corpus_dir, tmp_path / "data")
    path = first.folder / "manifest.json"
    manifest = json.loads(path.read_text())
    if edit == "old_format":
        manifest["format"] = 1
    elif edit == "files_malformed":
        manifest["files"] = {"doc_000.txt": None}
    else:
        manifest["files"][2] = ["doc_002.txt"]
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        again = build(corpus_dir, tmp_path / "data")
    assert again.built and again.manifest["data_fingerprint"] == first.manifest["data_fingerprint"]
    assert "rebuilding" in caplog.text
