"""Which files make up a corpus (the stdlib, the installed Python sources, a directory, a file, a glob, or a Hugging
Face dataset): listed, not read.

The standard library only, no torch: tokenization worker processes import this module.

The walk cannot hang or abort on what it meets in a folder: it never follows a directory symlink (so no loop can
trap it), takes a symlinked file only when the link resolves to a regular file, and skips everything that is not
a regular file (FIFOs, sockets, devices) and broken or looping links. A name that is not UTF-8 (a document key
must be) is skipped when listed, not when its key is first hashed mid-build. In a directory corpus, every regular
file of another type is counted too, so JSON Lines stored as ``.json`` are not left out without a word. Each skip
is counted by reason, logged once and recorded in the manifest. Opening a file is guarded as well (documents.py):
a file that turns into a FIFO after the listing is skipped, not waited on.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import logging
import os
import stat
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import installed

log = logging.getLogger(__name__)

STDLIB = "stdlib"
PYTHON = "python"  # the stdlib and every site-packages/dist-packages folder of the running interpreter
HF_PREFIX = "hf:"
# Folders under the stdlib root that are not the standard library (third-party packages, caches).
_STDLIB_EXCLUDE = frozenset({"site-packages", "dist-packages", "__pycache__"})
_COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".bz2": "bz2", ".xz": "xz"}
_DIR_FORMATS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}
SUPPORTED_IN_DIRECTORY = ".txt, .jsonl (each optionally .gz/.zst/.bz2/.xz) and .parquet"
_EXAMPLES = 5  # skipped paths named in the log line; the counts are complete


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
    """A resolved corpus: what will be read, what the listing skipped, and a cache key that changes with the input."""

    spec: str
    kind: str  # "stdlib" | "python" | "files" | "hf"
    root: str | None
    text_field: str
    files: list[SourceFile] = field(default_factory=list)
    hf: HFSource | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # entries the listing passed over, by reason
    sites: list[dict] = field(default_factory=list)  # python: each site folder, its packages and distributions

    @property
    def name(self) -> str:
        """Short, filesystem-safe name for cache folders."""
        if self.kind in (STDLIB, PYTHON):
            return f"{self.kind}-py{sys.version_info.major}.{sys.version_info.minor}"
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
            "python": list(sys.version_info[:3]) if self.kind in (STDLIB, PYTHON) else None,
        }

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s).strip("._") or "corpus"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def format_of(name: str) -> tuple[str | None, str | None]:
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


# ----------------------------------------------------------------------------------------------------------
# The walk


class Skips:
    """What a walk passed over: counts by reason, the first few paths for the log line, and the types of the files
    a directory corpus does not read (they get a log line of their own: they are not damage, and there can be many)."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: list[str] = []
        self.other_types: Counter = Counter()  # '.json', '.md', '.csv.gz', ... -> files

    def add(self, rel: str, reason: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < _EXAMPLES:
            # a name that is not UTF-8 shows its raw byte (\xe9) rather than Python's stand-in for it (\udce9)
            self.examples.append(f"{os.fsencode(rel).decode('utf-8', 'backslashreplace')} ({reason})")

    def add_other_type(self, name: str) -> None:
        self.counts[OTHER_TYPE] += 1
        self.other_types[type_label(name)] += 1


DIRECTORY_LINK = "directory link (not followed)"
UNDECODABLE_NAME = "name not UTF-8"
OTHER_TYPE = "other file type"


def undecodable(name: str) -> bool:
    """Whether a name from the file system holds bytes that are not UTF-8 (decoded as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def type_label(name: str) -> str:
    """'.json', '.csv.gz', '(no extension)': how a file of another type is named in the log."""
    lower = name.lower()
    compression = next((suffix for suffix in _COMPRESSIONS if lower.endswith(suffix)), "")
    ext = os.path.splitext(lower[: len(lower) - len(compression)])[1]
    return ext + compression if ext or compression else "(no extension)"


def _usable_link(path: str) -> tuple[os.stat_result | None, str | None]:
    """(stat of the regular file a symlink points to, None), or (None, why the link cannot be used)."""
    try:
        st = os.stat(path)  # follows the link
    except OSError as e:
        return None, "looping link" if e.errno == errno.ELOOP else "broken link"
    if stat.S_ISDIR(st.st_mode):
        return None, DIRECTORY_LINK
    return (st, None) if stat.S_ISREG(st.st_mode) else (None, "link to a non-regular file")


def _regular(entry: os.DirEntry) -> tuple[os.stat_result | None, str | None]:
    """(stat, None) for a regular file or a link to one, else (None, why not)."""
    if entry.is_symlink():
        return _usable_link(entry.path)
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError as e:  # removed since the folder was listed
        return None, f"unreadable ({type(e).__name__})"
    return (st, None) if stat.S_ISREG(st.st_mode) else (None, "not a regular file")


def walk_files(
    root: Path,
    *,
    descend: Callable[[tuple[str, ...]], bool],
    want: Callable[[tuple[str, ...]], bool],
    skips: Skips,
    parts: tuple[str, ...] = (),
    count_other_types: bool = False,
) -> Iterator[tuple[Path, str, os.stat_result]]:
    """(path, '/'-joined relative path, stat) of each regular file below ``root`` whose relative path parts pass
    ``want``, entering the real folders whose parts pass ``descend``. A directory link is never entered; a
    name ``want`` takes that is not a regular file (or a link to one) is counted in ``skips``, as is a directory
    link that ``descend`` would have entered, and a file or folder it would have taken whose name is not UTF-8.
    With ``count_other_types``, so is every regular file (or link to one) that ``want`` passes over, unless its
    name is hidden (a dot-file is tool metadata, .DS_Store or .gitignore, like the hidden folders no walk enters)."""
    try:
        with os.scandir(root.joinpath(*parts)) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        skips.add("/".join(parts) or ".", f"unreadable directory ({type(e).__name__})")
        return
    for entry in entries:
        child = (*parts, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if not descend(child):
                continue
            if undecodable(entry.name):  # every key below it would be unusable: counted once, here
                skips.add("/".join(child), UNDECODABLE_NAME)
                continue
            yield from walk_files(
                root, descend=descend, want=want, skips=skips, parts=child, count_other_types=count_other_types
            )
            continue
        is_candidate = want(child)
        other = count_other_types and not is_candidate and not entry.name.startswith(".")
        if not (is_candidate or (entry.is_symlink() and descend(child))):
            if other and entry.is_file(follow_symlinks=False):
                skips.add_other_type(entry.name)
            continue
        st, reason = _regular(entry)
        if reason == DIRECTORY_LINK:
            if descend(child):
                skips.add("/".join(child), reason)
        elif not is_candidate:
            if other and reason is None:  # a link to a regular file of another type
                skips.add_other_type(entry.name)
        elif reason is not None:
            skips.add("/".join(child), reason)
        elif undecodable(entry.name):
            skips.add("/".join(child), UNDECODABLE_NAME)
        else:
            yield Path(entry.path), "/".join(child), st


def glob_root_and_pattern(pattern: str) -> tuple[Path, tuple[str, ...]]:
    """The literal folder a glob starts from and the pattern parts below it (document keys are relative to it)."""
    parts = Path(pattern).parts
    n = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return (Path(*parts[:n]) if n else Path(".")), tuple(parts[n:])


def _part_matches(pattern: str, name: str) -> bool:
    # As glob: wildcards do not match a leading dot.
    return (pattern.startswith(".") or not name.startswith(".")) and fnmatch.fnmatch(name, pattern)


def glob_match(pattern: tuple[str, ...], parts: tuple[str, ...], prefix: bool = False) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts ('**' = any number of folders); with ``prefix``,
    whether something below folder ``parts`` could still match."""
    if not parts:
        return bool(pattern) if prefix else all(p == "**" for p in pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        return glob_match(pattern[1:], parts, prefix) or (
            not parts[0].startswith(".") and glob_match(pattern, parts[1:], prefix)
        )
    return _part_matches(pattern[0], parts[0]) and glob_match(pattern[1:], parts[1:], prefix)


def _glob_walk(pattern: str, skips: Skips) -> tuple[Path, Iterator[tuple[Path, str, os.stat_result]]]:
    # No file a glob does not match is counted as left out: the pattern chose, as it names the files it wants.
    root, pat = glob_root_and_pattern(pattern)
    files = walk_files(
        root, descend=lambda parts: glob_match(pat, parts, prefix=True), want=lambda p: glob_match(pat, p), skips=skips
    )
    return root, files


def _directory_walk(root: Path, skips: Skips) -> Iterator[tuple[Path, str, os.stat_result]]:
    return walk_files(
        root,
        descend=lambda parts: not parts[-1].startswith("."),
        want=lambda parts: format_of(parts[-1])[0] is not None,
        skips=skips,
        count_other_types=True,
    )


# ----------------------------------------------------------------------------------------------------------
# Checking and resolving a corpus argument


def check_corpus_arg(corpus: str) -> None:
    """Cheap validation for the constructor: the path or glob exists and holds a readable file."""
    if corpus in (STDLIB, PYTHON):
        return
    if corpus.startswith(HF_PREFIX):
        _parse_hf(corpus)
        require_datasets(corpus)
        return
    skips = Skips()
    if glob.has_magic(corpus):
        if next(_glob_walk(corpus, skips)[1], None) is None:
            raise ValueError(
                f"corpus={corpus!r}: the glob matches no files (regular files or links to them){_passed_over(skips)}"
            )
        return
    path = Path(corpus)
    if not path.exists():
        raise ValueError(
            f"corpus={corpus!r}: no such file or directory (valid: 'stdlib', 'python', a directory, a file, "
            f"a glob such as 'texts/**/*.jsonl', or 'hf:NAME[:CONFIG[:SPLIT]]')"
        )
    if not (path.is_dir() or path.is_file()):
        raise ValueError(f"corpus={corpus!r}: not a regular file or a directory (a FIFO, socket or device?)")
    if path.is_file() and undecodable(path.name):
        raise ValueError(
            f"corpus={corpus!r}: the file name is not UTF-8, and it is the key of the document: rename the file"
        )
    if path.is_dir() and next(_directory_walk(path, skips), None) is None:
        raise ValueError(
            f"corpus={corpus!r}: the directory holds no {SUPPORTED_IN_DIRECTORY} files (regular files or links to "
            f"them){_passed_over(skips)}"
        )


def _passed_over(skips: Skips) -> str:
    """What a walk that found nothing passed over, for its error (a walk of only links or bad names says so)."""
    return f"; passed over: {dict(skips.counts)}" if skips.counts else ""


def require_datasets(corpus: str) -> None:
    """An 'hf:' corpus needs the ``datasets`` package: say which extra installs it at validation, before the run
    writes anything, instead of an ImportError deep inside the shard build."""
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise ValueError(
            f"corpus={corpus!r} needs the Hugging Face datasets package, which is not installed: "
            'pip install -e ".[data]" (or point data.corpus at local .txt/.jsonl/.parquet files)'
        )


def _parse_hf(corpus: str) -> HFSource:
    parts = corpus[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"corpus={corpus!r}: expected 'hf:NAME', 'hf:NAME:CONFIG' or 'hf:NAME:CONFIG:SPLIT'")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return HFSource(name, config, split)


def _source(path: Path, rel: str, st: os.stat_result, fmt: str, compression: str | None) -> SourceFile:
    return SourceFile(str(path), rel, st.st_size, st.st_mtime_ns, fmt, compression)


def _glob_format(name: str) -> tuple[str, str | None]:
    """A glob or a single file names its files explicitly: anything not .jsonl/.parquet is read as text."""
    fmt, compression = format_of(name)
    return fmt or "text", compression


def resolve_corpus(corpus: str, text_field: str = "text") -> CorpusSpec:
    """List the files of ``corpus`` (sorted by relative path) without reading them; log what was skipped."""
    if corpus.startswith(HF_PREFIX):
        return CorpusSpec(corpus, "hf", None, text_field, hf=_parse_hf(corpus))
    skips = Skips()
    sites = []
    if corpus in (STDLIB, PYTHON):
        kind, root = corpus, stdlib_root()
        files = _python_files(root, skips, lambda parts: parts[-1] not in _STDLIB_EXCLUDE)
        if corpus == PYTHON:
            site_files, sites = _site_files(skips)
            files += site_files
    else:
        check_corpus_arg(corpus)
        kind = "files"
        if glob.has_magic(corpus):
            root, found = _glob_walk(corpus, skips)
            files = [_source(p, rel, st, *_glob_format(p.name)) for p, rel, st in found]
        elif Path(corpus).is_file():
            path = Path(corpus)
            root = path.parent
            files = [_source(path, path.name, path.stat(), *_glob_format(path.name))]
        else:
            root = Path(corpus)
            files = [_source(p, rel, st, *format_of(p.name)) for p, rel, st in _directory_walk(root, skips)]
    files.sort(key=lambda f: f.rel)
    _log_skips(corpus, skips)
    if any(f.fmt == "parquet" for f in files):
        require_pyarrow()
    if any(f.compression == "zst" for f in files):
        zstd_frame_decompressor()
    return CorpusSpec(corpus, kind, str(root.resolve()), text_field, files, skipped=dict(skips.counts), sites=sites)


def _log_skips(corpus: str, skips: Skips) -> None:
    """One line for the entries that could not be read, one for the files of other types a directory left out."""
    unreadable = {reason: n for reason, n in skips.counts.items() if reason != OTHER_TYPE}
    if unreadable:
        log.warning(
            "corpus=%r: skipped %d entries (not regular files, or names not UTF-8) %s, e.g. %s",
            corpus,
            sum(unreadable.values()),
            unreadable,
            skips.examples,
        )
    if skips.other_types:
        shown = dict(skips.other_types.most_common(_EXAMPLES))
        more = len(skips.other_types) - len(shown)
        log.warning(
            "corpus=%r: left out %d files of other types %s%s: a directory corpus reads only %s. JSON Lines saved "
            "as .json: rename them to .jsonl; other text: name the files with a glob (DIR/**/*.md), which reads "
            "each one as a text document",
            corpus,
            skips.counts[OTHER_TYPE],
            shown,
            f" and {more} more types" if more else "",
            SUPPORTED_IN_DIRECTORY,
        )


def _python_files(root: Path, skips: Skips, descend: Callable[[tuple[str, ...]], bool], label: str = "") -> list:
    """The .py files below ``root`` (keys prefixed with ``label/`` when given), never inside __pycache__."""
    # Other files (test data, .pyi, .so, ...) are not counted as left out, unlike in a directory corpus: only the
    # .py files is what these corpora are, not a filter that can drop someone's data, and counting them would put
    # hundreds of entries (660 in the 3.11 stdlib, thousands with site-packages) in every manifest and a warning in
    # every run's log.
    found = walk_files(
        root,
        descend=lambda parts: parts[-1] != "__pycache__" and descend(parts),
        want=lambda parts: parts[-1].endswith(".py"),
        skips=skips,
    )
    prefix = f"{label}/" if label else ""
    return [_source(path, prefix + rel, st, "text", None) for path, rel, st in found]


def _site_files(skips: Skips) -> tuple[list[SourceFile], list[dict]]:
    """The .py files of every site folder, keyed '<folder label>/<path in it>' ('site-packages/numpy/...': the
    stdlib walk never gives such a key, it leaves these folders out), and each folder's manifest entry."""
    files, sites = [], []
    folders = installed.site_folders()
    for folder, label in zip(folders, installed.folder_labels(folders), strict=True):
        found = _python_files(folder, skips, lambda parts: not parts[-1].startswith("."), label)
        files += found
        sites.append(installed.describe_folder(folder, label, [(f.rel[len(label) + 1 :], f.size) for f in found]))
    return files, sites


def require_pyarrow():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading .parquet files needs pyarrow, which is not installed: pip install pyarrow") from e
    return pq


def zstd_frame_decompressor():
    """A callable that makes a decompressor of one zstd frame, with the standard library's incremental API:
    ``decompress(data)``, ``eof`` (the frame is complete), ``unused_data`` (what follows it). documents.py reads
    frame after frame with it, so it can tell a stream cut inside a frame: zstandard's ``stream_reader`` returns
    the shorter data without a word, where gzip, bz2 and lzma raise EOFError."""
    try:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj
    except ImportError:
        pass
    try:
        from compression import zstd  # Python >= 3.14

        return zstd.ZstdDecompressor
    except ImportError as e:
        raise ImportError(
            "reading .zst files needs the zstandard package (pip install zstandard) or Python >= 3.14"
        ) from e
