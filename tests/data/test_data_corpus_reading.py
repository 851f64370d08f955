"""Reading damaged corpus files: a cut compressed file (any of the four compressions), a damaged parquet file and
one without the text field are each skipped and named, like every other unreadable file, not read short or fatal."""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import random

import pytest
from datagen import build, make_text

CUT = "unreadable (EOFError: Compressed file ended before the end-of-stream marker was reached)"


def _zstd(data: bytes) -> bytes:
    return pytest.importorskip("zstandard").ZstdCompressor().compress(data)


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zst": _zstd}


def _content(fmt: str) -> bytes:
    """About 100 kB of text (one document) or of JSON Lines records (one per line)."""
    rng = random.Random(0)
    if fmt == "txt":
        return make_text(rng, 20_000).encode()
    return "".join(json.dumps({"text": make_text(rng, 50)}) + "\n" for _ in range(400)).encode()


@pytest.mark.parametrize("fmt", ["txt", "jsonl"])
@pytest.mark.parametrize("compression", list(COMPRESS))
def test_a_cut_compressed_file_is_skipped_as_unreadable(tmp_path, caplog, compression, fmt):
    """Before: a cut .zst was read as a shorter document (or the records before the cut), without a word."""
    root = tmp_path / "c"
    root.mkdir()
    packed = COMPRESS[compression](_content(fmt))
    name = f"big.{fmt}.{compression}"
    (root / name).write_bytes(packed[: len(packed) // 2])
    (root / "small.txt").write_text("an intact document\n")
    with caplog.at_level(logging.WARNING):
        p = build(root, tmp_path / "data")
    big, small = p.manifest["files"]
    assert (big["path"], big["documents"], big["skipped"]) == (name, 0, CUT)
    assert "skipped_records" not in big  # the records before the cut are not kept either
    assert (small["path"], small["documents"]) == ("small.txt", 1)
    assert p.manifest["skipped"] == {"files": 1, "records": {}}
    assert f"{name}: {CUT}" in caplog.text


def test_zstd_frames_one_after_another_are_one_stream(tmp_path):
    """The reader that tells a cut frame goes on across frames, as `zstd -d` does."""
    root = tmp_path / "c"
    root.mkdir()
    text = _content("txt")
    (root / "frames.txt.zst").write_bytes(b"".join(_zstd(text[i : i + 30_000]) for i in range(0, len(text), 30_000)))
    (root / "empty.txt.zst").write_bytes(b"")  # no frame: an empty document, as an empty .gz is
    (root / "other.txt").write_text("a second document\n")
    p = build(root, tmp_path / "data", val_fraction=1e-9)
    assert [(f["path"], f["documents"]) for f in p.manifest["files"]] == [
        ("empty.txt.zst", 0),
        ("frames.txt.zst", 1),
        ("other.txt", 1),
    ]
    assert p.manifest["files"][0]["skipped_records"] == {"empty_document": 1}
    assert sum(m["tokens"] for m in p.manifest["splits"].values()) == len(text) + len("a second document\n") + 2


@pytest.fixture
def pq():
    pytest.importorskip("pyarrow")
    return pytest.importorskip("pyarrow.parquet")


def _table(**columns):
    import pyarrow as pa

    return pa.table(columns)


def test_a_damaged_parquet_file_is_skipped_and_named(tmp_path, caplog, pq):
    """Before: the run ended with pyarrow's error, naming no file, after every earlier file was read."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.txt").write_text("before it\n")
    pq.write_table(_table(text=[f"row {i}" for i in range(100)]), root / "b.parquet")
    data = (root / "b.parquet").read_bytes()
    (root / "b.parquet").write_bytes(data[: len(data) // 2])
    (root / "c.txt").write_text("after it\n")
    with caplog.at_level(logging.WARNING):
        p = build(root, tmp_path / "data")
    files = p.manifest["files"]
    assert [(f["path"], f["documents"]) for f in files] == [("a.txt", 1), ("b.parquet", 0), ("c.txt", 1)]
    assert files[1]["skipped"].startswith("unreadable (ArrowInvalid: Parquet magic bytes not found in footer")
    assert p.manifest["skipped"] == {"files": 1, "records": {}}
    assert "b.parquet: unreadable (ArrowInvalid" in caplog.text


def test_a_parquet_file_without_the_text_field_is_skipped_and_named(tmp_path, caplog, pq):
    """Before: one such file ended the whole run; a .jsonl file of other fields only has its records counted."""
    root = tmp_path / "c"
    root.mkdir()
    pq.write_table(_table(text=["alpha", "beta", None]), root / "a.parquet")
    pq.write_table(_table(body=["gamma"], id=[1]), root / "nocol.parquet")
    with caplog.at_level(logging.WARNING):
        p = build(root, tmp_path / "data", val_fraction=1e-9)
    files = p.manifest["files"]
    assert [(f["path"], f["documents"]) for f in files] == [("a.parquet", 2), ("nocol.parquet", 0)]
    assert files[1]["skipped"] == "missing text_field='text' (columns: body, id)"
    assert files[1]["sha256"] is not None  # it was read: a later edit that adds the column is seen (corpus_check)
    assert p.manifest["skipped"] == {"files": 1, "records": {"missing_field": 1}}
    assert "nocol.parquet: missing text_field='text' (columns: body, id)" in caplog.text


def test_when_no_parquet_file_has_the_text_field_the_error_says_so(tmp_path, pq):
    root = tmp_path / "c"
    root.mkdir()
    pq.write_table(_table(body=["gamma"]), root / "a.parquet")
    pq.write_table(_table(**{f"c{i}": [i] for i in range(10)}), root / "b.parquet")
    with pytest.raises(ValueError) as e:
        build(root, tmp_path / "data")
    assert str(e.value) == (
        f"corpus={str(root)!r} produced no documents: 2 files read, 2 skipped "
        """({"missing text_field='text'": 2}), records skipped: {}"""
    )
