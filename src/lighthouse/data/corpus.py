"""Where documents come from: the embedded stdlib corpus, user files, Hugging Face streaming.

This module reads text and nothing else: no tokenizer, no torch. It is imported by the tokenization
worker processes, so it stays light (the standard library only; pyarrow, zstandard and datasets are
imported when a corpus needs them).

A *document* is one unit of the train/validation split and one EOS-terminated run of the packed
stream: a whole file for ``.py``/``.txt`` files, one record for ``.jsonl``/``.parquet``/HF datasets.
Every document has a stable key (``relpath`` or ``relpath#record``); the split hashes that key.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

STDLIB = "stdlib"
HF_PREFIX = "hf:"
# Folders under the stdlib root that are not the standard library (third-party packages, caches).
_STDLIB_EXCLUDE = frozenset({"site-packages", "dist-packages", "__pycache__"})
_COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".bz2": "bz2", ".xz": "xz"}
_DIR_FORMATS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
SUPPORTED_IN_DIRECTORY = ".txt, .jsonl (each optionally .gz/.zst/.bz2/.xz) and .parquet"


@dataclass(frozen=True)
class SourceFile:
    """One file of a corpus, as listed (not yet read)."""

    path: str  # absolute
    rel: str  # relative to the corpus root, '/'-separated: the document key's prefix
    size: int
    mtime_ns: int
    fmt: str  # "text" (one document per file) | "jsonl" | "parquet" (one document per record)
    compression: str | None = None


@dataclass(frozen=True)
class HFSource:
    name: str
    config: str | None
    split: str


@dataclass
class CorpusSpec:
    """A resolved corpus: what will be read, and a cache key that changes when any of it changes."""

    spec: str
    kind: str  # "stdlib" | "files" | "hf"
    root: str | None
    text_field: str
    files: list[SourceFile] = field(default_factory=list)
    hf: HFSource | None = None

    @property
    def name(self) -> str:
        """Short, filesystem-safe name for cache folders."""
        if self.kind == STDLIB:
            return f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"
        if self.kind == "hf":
            return "hf-" + _safe(self.hf.name)
        return _safe(Path(self.root).name or "corpus")

    def listing_key(self) -> dict:
        """What identifies the input cheaply (paths, sizes, mtimes); content hashes go in the manifest."""
        return {
            "kind": self.kind,
            "root": self.root,
            "text_field": self.text_field,
            "files": [(f.rel, f.size, f.mtime_ns, f.fmt, f.compression) for f in self.files],
            "hf": asdict(self.hf) if self.hf else None,
            "python": list(sys.version_info[:3]) if self.kind == STDLIB else None,
        }

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s).strip("._") or "corpus"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stat(path: Path, rel: str, fmt: str, compression: str | None) -> SourceFile:
    st = path.stat()
    return SourceFile(str(path), rel, st.st_size, st.st_mtime_ns, fmt, compression)


def _format_of(name: str) -> tuple[str | None, str | None]:
    """('text'|'jsonl'|'parquet'|None, compression) from a file name, by its suffixes."""
    lower = name.lower()
    compression = None
    for suffix, comp in _COMPRESSIONS.items():
        if lower.endswith(suffix):
            compression, lower = comp, lower[: -len(suffix)]
            break
    for suffix, fmt in _DIR_FORMATS.items():
        if lower.endswith(suffix):
            if fmt == "parquet" and compression:
                return None, None  # parquet compresses internally
            return fmt, compression
    return None, compression


def _has_magic(s: str) -> bool:
    return glob.has_magic(s)


def check_corpus_arg(corpus: str) -> None:
    """Cheap validation for ``__init__``: the path or glob exists and holds a readable file."""
    if corpus == STDLIB:
        return
    if corpus.startswith(HF_PREFIX):
        _parse_hf(corpus)
        return
    if _has_magic(corpus):
        if not any(os.path.isfile(p) for p in glob.iglob(corpus, recursive=True)):
            raise ValueError(f"corpus={corpus!r}: the glob matches no files")
        return
    path = Path(corpus)
    if not path.exists():
        raise ValueError(
            f"corpus={corpus!r}: no such file or directory (valid: 'stdlib', a directory, a file, "
            f"a glob such as 'texts/**/*.jsonl', or 'hf:NAME[:CONFIG[:SPLIT]]')"
        )
    if path.is_dir() and not any(_format_of(f)[0] for _, _, fs in os.walk(path) for f in fs):
        raise ValueError(f"corpus={corpus!r}: the directory holds no {SUPPORTED_IN_DIRECTORY} files")


def _parse_hf(corpus: str) -> HFSource:
    parts = corpus[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"corpus={corpus!r}: expected 'hf:NAME', 'hf:NAME:CONFIG' or 'hf:NAME:CONFIG:SPLIT'")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return HFSource(name, config, split)


def resolve_corpus(corpus: str, text_field: str = "text") -> CorpusSpec:
    """List the files of ``corpus`` (sorted by relative path) without reading them."""
    if corpus == STDLIB:
        root = stdlib_root()
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_EXCLUDE)
            for name in filenames:
                if name.endswith(".py"):
                    path = Path(dirpath) / name
                    files.append(_stat(path, path.relative_to(root).as_posix(), "text", None))
        files.sort(key=lambda f: f.rel)
        return CorpusSpec(corpus, STDLIB, str(root), text_field, files)
    if corpus.startswith(HF_PREFIX):
        return CorpusSpec(corpus, "hf", None, text_field, hf=_parse_hf(corpus))

    check_corpus_arg(corpus)
    files = []
    if _has_magic(corpus):
        # The root is the glob's literal prefix, so relative paths (document keys) do not depend on cwd.
        literal = []
        for part in Path(corpus).parts:
            if _has_magic(part):
                break
            literal.append(part)
        root = Path(*literal) if literal else Path(".")
        for p in sorted(glob.glob(corpus, recursive=True)):
            path = Path(p)
            if path.is_file():
                fmt, comp = _format_of(path.name)
                # A glob names its files explicitly: anything not .jsonl/.parquet is read as text.
                files.append(_stat(path, os.path.relpath(path, root).replace(os.sep, "/"), fmt or "text", comp))
    else:
        path = Path(corpus)
        if path.is_file():
            root = path.parent
            fmt, comp = _format_of(path.name)
            files.append(_stat(path, path.name, fmt or "text", comp))
        else:
            root = path
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    fmt, comp = _format_of(name)
                    if fmt:
                        p = Path(dirpath) / name
                        files.append(_stat(p, p.relative_to(path).as_posix(), fmt, comp))
    files.sort(key=lambda f: f.rel)
    if any(f.fmt == "parquet" for f in files):
        require_pyarrow()
    if any(f.compression == "zst" for f in files):
        _zstd_reader_factory()
    return CorpusSpec(corpus, "files", str(root.resolve()), text_field, files)


# ----------------------------------------------------------------------------------------------------------
# Split


def split_value(key: str) -> float:
    """Uniform in [0, 1), a pure function of the document key (stable across runs, machines, corpora)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_val(key: str, val_fraction: float) -> bool:
    return split_value(key) < val_fraction


# ----------------------------------------------------------------------------------------------------------
# Reading


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


def require_pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading .parquet files needs pyarrow, which is not installed: pip install pyarrow") from e
    return pq


def _zstd_reader_factory():
    try:
        import zstandard

        return lambda f: zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    except ImportError:
        pass
    try:
        from compression import zstd  # Python >= 3.14

        return lambda f: zstd.ZstdFile(f)
    except ImportError as e:
        raise ImportError(
            "reading .zst files needs the zstandard package (pip install zstandard) or Python >= 3.14"
        ) from e


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
        return io.BufferedReader(_zstd_reader_factory()(raw))
    raise ValueError(f"unknown compression {compression!r}")


@dataclass
class FileRead:
    """What reading one file produced: its hash, its documents (key, text), and what was skipped."""

    rel: str
    sha256: str
    nbytes: int
    docs: list[tuple[str, str]]
    skipped: str | None = None  # reason the whole file was skipped
    record_skips: Counter = field(default_factory=Counter)


def _valid_text(text, skips: Counter) -> bool:
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


def read_file(
    src: SourceFile, text_field: str = "text", max_docs: int | None = None, max_bytes: int | None = None
) -> FileRead:
    """Read one file completely (for its hash); return at most ``max_docs``/about ``max_bytes`` documents."""
    if src.fmt == "parquet":
        return _read_parquet(src, text_field, max_docs, max_bytes)
    skips: Counter = Counter()
    docs: list[tuple[str, str]] = []
    with open(src.path, "rb", buffering=0) as f:
        raw = _HashingReader(f)
        buffered = io.BufferedReader(raw, 1 << 20)
        stream = _decompressed(buffered, src.compression)
        skipped = None
        try:
            if src.fmt == "text":
                data = stream.read()
                if b"\x00" in data:
                    skipped = "binary (contains NUL bytes)"
                else:
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError as e:
                        skipped = f"not UTF-8 (invalid byte at offset {e.start})"
                    else:
                        if text:
                            docs.append((src.rel, text))
                        else:
                            skips["empty_document"] += 1
            else:
                nbytes = 0
                for i, line in enumerate(stream):
                    if (max_docs is not None and len(docs) >= max_docs) or (
                        max_bytes is not None and nbytes >= max_bytes
                    ):
                        break
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:  # bad JSON or bad UTF-8
                        skips["bad_json_line"] += 1
                        continue
                    text = record.get(text_field) if isinstance(record, dict) else None
                    if _valid_text(text, skips):
                        docs.append((f"{src.rel}#{i}", text))
                        nbytes += len(text.encode("utf-8"))
        except Exception as e:  # corrupt compressed data: gzip, lzma and zstd raise different types
            skipped = f"unreadable ({type(e).__name__}: {e})"
            docs = []
        raw.drain()
    return FileRead(src.rel, raw.sha.hexdigest(), raw.nbytes, docs, skipped, skips)


def _read_parquet(src: SourceFile, text_field: str, max_docs: int | None, max_bytes: int | None) -> FileRead:
    pq = require_pyarrow()
    sha = hashlib.sha256()
    with open(src.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    skips: Counter = Counter()
    docs: list[tuple[str, str]] = []
    pf = pq.ParquetFile(src.path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(f"text_field={text_field!r}: column not found in {src.rel} (columns: {pf.schema_arrow.names})")
    row, nbytes = 0, 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if (max_docs is not None and len(docs) >= max_docs) or (max_bytes is not None and nbytes >= max_bytes):
                break
            if _valid_text(text, skips):
                docs.append((f"{src.rel}#{row}", text))
                nbytes += len(text.encode("utf-8"))
            row += 1
    return FileRead(src.rel, sha.hexdigest(), src.size, docs, None, skips)


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
