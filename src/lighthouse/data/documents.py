"""Reading documents: one listed file (or a Hugging Face stream) into (key, text) pairs, with its sha256 and skips.

The standard library only, no torch (pyarrow, zstandard and datasets are imported when a corpus needs them):
tokenization worker processes run this code.

A *document* is one unit of the train/validation split and one EOS-terminated run of the packed stream: a whole
file for ``.py``/``.txt`` files, one record for ``.jsonl``/``.parquet``/HF datasets. Every document has a stable
key (``relpath`` or ``relpath#record``); the split hashes that key (packing.py).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from .corpus import HFSource, SourceFile, require_pyarrow, zstd_frame_decompressor

# Opening without O_NONBLOCK would wait forever for a writer when the path is a FIFO.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class NotRegularFile(OSError):
    """The path no longer names a regular file (it was replaced after the listing)."""


def open_regular(path: str):
    """Open a regular file for unbuffered binary reading; raise NotRegularFile, without blocking, for anything else."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{path} is not a regular file (mode {stat.filemode(mode)})")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class _HashingReader(io.RawIOBase):
    """Raw file wrapper that hashes every byte read, so a file is read (and hashed) exactly once."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.sha.update(memoryview(b)[:n])
            self.nbytes += n
        return n or 0

    def drain(self) -> None:
        while self._f.readable():
            chunk = self._f.read(1 << 20)
            if not chunk:
                break
            self.sha.update(chunk)
            self.nbytes += len(chunk)


class _ZstdFrames(io.RawIOBase):
    """The zstd frames of a stream one after another, decompressed; EOFError, with gzip's message, when the stream
    ends inside a frame (a cut download, a full disk), so a cut .zst is skipped as unreadable like a cut .gz."""

    # Compressed bytes fed per call: a call's output is held at once (a few MB of text at 1 MB in).
    _CHUNK = 1 << 20

    def __init__(self, raw, new_frame):
        self._raw = raw
        self._new_frame = new_frame  # corpus.zstd_frame_decompressor()
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._out = memoryview(b"")  # decompressed, not yet returned

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Decompress until there is output; False at a clean end (the input ends between frames)."""
        while not self._out:
            data = b""
            if self._frame is not None and self._frame.eof:
                data, self._frame = self._frame.unused_data, None  # the next frame may start in the same chunk
            data = data or self._raw.read(self._CHUNK)
            if not data:
                if self._frame is not None:
                    raise EOFError("Compressed file ended before the end-of-stream marker was reached")
                return False
            if self._frame is None:
                self._frame = self._new_frame()
            self._out = memoryview(self._frame.decompress(data))
        return True

    def readinto(self, b) -> int:
        if not self._fill():
            return 0
        n = min(len(b), len(self._out))
        memoryview(b).cast("B")[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def readall(self) -> bytes:
        parts = []
        while self._fill():
            parts.append(self._out.tobytes())
            self._out = memoryview(b"")
        return b"".join(parts)


def _decompressed(raw, compression: str | None):
    if compression is None:
        return raw
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw)
    if compression == "bz2":
        import bz2

        return bz2.BZ2File(raw)
    if compression == "xz":
        import lzma

        return lzma.LZMAFile(raw)
    if compression == "zst":
        return io.BufferedReader(_ZstdFrames(raw, zstd_frame_decompressor()))
    raise ValueError(f"unknown compression {compression!r}")


@dataclass
class FileRead:
    """What reading one file produced: its hash, its documents (key, text), and what was skipped."""

    rel: str
    sha256: str | None
    nbytes: int
    docs: list[tuple[str, str]]
    skipped: str | None = None  # reason the whole file was skipped
    record_skips: Counter = field(default_factory=Counter)


def valid_text(text, skips: Counter) -> bool:
    """Whether a record's text can be a document; counts the reason in ``skips`` when not."""
    if not isinstance(text, str):
        skips["non_string_field" if text is not None else "missing_field"] += 1
        return False
    if not text:
        skips["empty_document"] += 1
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from JSON escapes
        skips["invalid_unicode"] += 1
        return False
    return True


def _reached(docs: list, nbytes: int, max_docs: int | None, max_bytes: int | None) -> bool:
    return (max_docs is not None and len(docs) >= max_docs) or (max_bytes is not None and nbytes >= max_bytes)


def _text_document(src: SourceFile, data: bytes, skips: Counter) -> tuple[list[tuple[str, str]], str | None]:
    """(documents, reason the file is skipped) of a one-document file."""
    if b"\x00" in data:
        return [], "binary (contains NUL bytes)"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return [], f"not UTF-8 (invalid byte at offset {e.start})"
    if not text:
        skips["empty_document"] += 1
        return [], None
    return [(src.rel, text)], None


def _jsonl_documents(src, stream, text_field, max_docs, max_bytes, skips) -> list[tuple[str, str]]:
    docs: list[tuple[str, str]] = []
    nbytes = 0
    for i, line in enumerate(stream):
        if _reached(docs, nbytes, max_docs, max_bytes):
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:  # bad JSON or bad UTF-8
            skips["bad_json_line"] += 1
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if valid_text(text, skips):
            docs.append((f"{src.rel}#{i}", text))
            nbytes += len(text.encode("utf-8"))
    return docs


def read_file(
    src: SourceFile, text_field: str = "text", max_docs: int | None = None, max_bytes: int | None = None
) -> FileRead:
    """Read one file completely (for its hash); return at most ``max_docs``/about ``max_bytes`` documents."""
    try:
        f = open_regular(src.path)
    except OSError as e:  # gone, unreadable, or no longer a regular file since the listing
        return FileRead(src.rel, None, 0, [], f"unreadable ({type(e).__name__}: {e})")
    if src.fmt == "parquet":
        with f:
            return _read_parquet(src, f, text_field, max_docs, max_bytes)
    skips: Counter = Counter()
    skipped = None
    with f:
        raw = _HashingReader(f)
        stream = _decompressed(io.BufferedReader(raw, 1 << 20), src.compression)
        try:
            if src.fmt == "text":
                docs, skipped = _text_document(src, stream.read(), skips)
            else:
                docs = _jsonl_documents(src, stream, text_field, max_docs, max_bytes, skips)
        except Exception as e:  # corrupt compressed data: gzip, lzma and zstd raise different types
            skipped = f"unreadable ({type(e).__name__}: {e})"
            docs = []
        raw.drain()
    return FileRead(src.rel, raw.sha.hexdigest(), raw.nbytes, docs, skipped, skips)


_COLUMNS_SHOWN = 8  # of a parquet file without text_field, in its skip reason


def _read_parquet(src: SourceFile, f, text_field: str, max_docs: int | None, max_bytes: int | None) -> FileRead:
    """The rows of the ``text_field`` column. A damaged file, or one without that column, is skipped with its
    reason like a damaged compressed file or a .jsonl file of other fields: one such file does not end the run
    (build.py stops with the reasons only when no file gave a document)."""
    pq = require_pyarrow()
    sha = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        sha.update(chunk)
    f.seek(0)
    skips: Counter = Counter()
    docs: list[tuple[str, str]] = []
    try:
        pf = pq.ParquetFile(f)
        columns = pf.schema_arrow.names
        if text_field not in columns:
            shown = ", ".join(columns[:_COLUMNS_SHOWN]) + (", ..." if len(columns) > _COLUMNS_SHOWN else "")
            reason = f"missing text_field={text_field!r} (columns: {shown})"
            return FileRead(src.rel, sha.hexdigest(), src.size, [], reason)
        row, nbytes = 0, 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if _reached(docs, nbytes, max_docs, max_bytes):
                    break
                if valid_text(text, skips):
                    docs.append((f"{src.rel}#{row}", text))
                    nbytes += len(text.encode("utf-8"))
                row += 1
    except Exception as e:  # a cut or corrupt file: pyarrow raises ArrowInvalid, OSError, ... by where it breaks
        return FileRead(src.rel, sha.hexdigest(), src.size, [], f"unreadable ({type(e).__name__}: {e})", skips)
    return FileRead(src.rel, sha.hexdigest(), src.size, docs, None, skips)


def read_records(records: list[tuple[str, object]]) -> FileRead:
    """A batch of (key, text) records from a Hugging Face stream, as one read with its skips counted."""
    skips: Counter = Counter()
    return FileRead("", None, 0, [(k, t) for k, t in records if valid_text(t, skips)], None, skips)


def iter_hf_documents(hf: HFSource, text_field: str) -> Iterator[tuple[str, str | None]]:
    """(key, text) for each record of a streamed Hugging Face dataset, in the dataset's order."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "corpus='hf:...' needs the Hugging Face datasets package, which is not installed: "
            "pip install datasets (or point corpus at local .txt/.jsonl/.parquet files)"
        ) from e
    ds = datasets.load_dataset(hf.name, hf.config, split=hf.split, streaming=True)
    for i, record in enumerate(ds):
        if i == 0 and text_field not in record:
            raise ValueError(f"text_field={text_field!r}: not a field of {hf.name} (fields: {sorted(record)})")
        yield f"{i}", record.get(text_field)
