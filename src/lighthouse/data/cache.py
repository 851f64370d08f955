"""The prepare/cache layer: find or make the tokenizer and shard folder of a configuration, verified before use.

A folder is found by a key hashing the corpus listing (paths, sizes, mtimes), the tokenizer fingerprint, the
selection (split fraction, caps), ``shard_tokens`` and the format version: a second run with the same inputs
reuses it. A found folder is checked first, with ``checksums`` (prepare_data, once per node): its files against
its manifest (``verify``: sizes and sha256), then the corpus against the manifest's ``files`` (corpus_check.py:
every file read is re-hashed, every file skipped as unopenable is retried), since the listing cannot see an
edit that restores size and mtime, or a file made readable. A damaged folder is rebuilt with a warning (the
corpus being unchanged, the rebuild reproduces the same tokens); one built from other corpus contents is rebuilt
with a warning naming the files (its data_fingerprint changes with them, so a resume on it is refused). With
``build=False`` either is an error naming the files instead. A folder without a manifest (builds are renamed into
place with theirs, so only a deletion leaves one) is damaged too, and so is a cached BPE tokenizer that no longer
loads: it is retrained with a warning.

Whatever will be written is checked first: before a BPE tokenizer is trained, its folder under data_dir; before a
folder is built or set aside, data_dir/shards. An unwritable data_dir is then one line saying what needed it,
not an OSError after minutes of work; a read-only data_dir that holds everything needed is only read.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from .build import Selection, build_shards, content_key, read_train_texts
from .corpus import CorpusSpec
from .corpus_check import StaleShards, corpus_changes
from .shards import FORMAT_VERSION, MANIFEST, DamagedShards, damaged_message, load_manifest, verify
from .tokenizer import TextTokenizer, TokenizerSpec, byte_tokenizer, train_bpe

log = logging.getLogger(__name__)


class DataDirNotWritable(OSError):
    """data_dir cannot be written where work that is about to start must save its result."""


@dataclass
class Prepared:
    folder: Path
    manifest: dict
    tokenizer: TextTokenizer
    built: bool  # False when an existing cache folder was reused


def resolve_tokenizer(spec: TokenizerSpec, corpus: CorpusSpec, data_dir: Path, selection: Selection, num_proc: int):
    """The tokenizer for ``spec``: built in (byte), loaded (file, hf), or loaded/trained and saved (bpe)."""
    if spec.kind == "byte":
        return byte_tokenizer()
    if spec.kind == "file":
        return TextTokenizer.from_file(spec.path)
    if spec.kind == "hf":
        return TextTokenizer.from_hf_folder(spec.path)
    s = selection
    key = content_key(
        {
            "corpus": corpus.listing_key(),
            "val_fraction": s.val_fraction,
            "limits": [s.max_documents, s.max_bytes],
            "vocab": spec.vocab_size,
        }
    )
    path = data_dir / "tokenizers" / f"bpe{spec.vocab_size}-{corpus.name}-{key}.json"
    if path.is_file():
        try:
            return TextTokenizer.from_file(path)
        except ValueError as e:  # truncated or overwritten: the file is only a cache
            damaged = str(e)
        _require_writable(data_dir, path.parent, f"{damaged}; it must be retrained")
        log.warning("%s; retraining %s (the file is a cache)", damaged, spec.spec)
    else:
        _require_writable(data_dir, path.parent, f"{spec.spec} must be trained and saved in {path.parent}")
    t0 = time.perf_counter()
    tok = train_bpe(read_train_texts(corpus, selection, num_proc), spec.vocab_size)
    tok.save(path)
    log.info(
        "trained %s on %s in %.1f s -> %s (fingerprint %s)",
        spec.spec,
        corpus.spec,
        time.perf_counter() - t0,
        path,
        tok.fingerprint,
    )
    return tok


def shard_folder(
    corpus: CorpusSpec,
    spec: TokenizerSpec,
    tokenizer: TextTokenizer,
    data_dir: Path,
    selection: Selection,
    shard_tokens: int,
) -> Path:
    """Where the shards of this configuration live (whether or not they exist yet)."""
    key = content_key(
        {
            "format": FORMAT_VERSION,
            "corpus": corpus.listing_key(),
            "tokenizer": tokenizer.fingerprint,
            "shard_tokens": shard_tokens,
            **asdict(selection),
        }
    )
    label = spec.kind if spec.kind == "byte" else f"{spec.kind}{tokenizer.vocab_size}"
    return data_dir / "shards" / f"{corpus.name}-{label}-{key}"


def _require_writable(data_dir: Path, folder: Path, why: str) -> None:
    """Make ``folder`` (in data_dir) and a file in it, or raise DataDirNotWritable saying ``why`` it is needed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        state = "read-only" if e.errno == errno.EROFS else f"not writable ({e.strerror}: {e.filename or folder})"
        raise DataDirNotWritable(
            f"{why}, but data_dir {data_dir} is {state}: set data.data_dir to a writable folder"
        ) from None


def _verified(folder: Path, checksums: bool) -> tuple[dict | None, list[str]]:
    """(manifest, []) when the folder is intact (by sha256 with ``checksums``), else (None, the problems)."""
    if not (folder / MANIFEST).is_file():
        return None, [f"{MANIFEST} is missing"]
    try:
        manifest = load_manifest(folder)
    except ValueError as e:
        return None, [str(e)]
    problems = verify(folder, manifest) if checksums else []
    return (None, problems) if problems else (manifest, [])


def _set_aside(folder: Path) -> None:
    """Move a damaged folder out of the way atomically, then delete it. Nodes that share a disk should prepare
    on one of them (Lightning's prepare_data_per_node=False): two that rebuild at once stay consistent (the
    first rename wins, the other build is dropped), but one could set aside a folder the other just rebuilt."""
    aside = folder.parent / f".{folder.name}.damaged-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # someone else moved it first
        return
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:  # a file or link where the folder belongs
        aside.unlink(missing_ok=True)


def prepare(
    corpus: CorpusSpec,
    spec: TokenizerSpec,
    data_dir: str | os.PathLike,
    selection: Selection,
    *,
    num_proc: int | None = None,
    shard_tokens: int = 2**28,
    progress: bool = True,
    build: bool = True,
    checksums: bool = True,
) -> Prepared:
    """Find (verified) or build the shards of (corpus, tokenizer, selection). ``checksums=False`` checks only
    that the manifest loads (open_split checks sizes); ``build=False`` raises instead of building or rebuilding."""
    data_dir = Path(data_dir)
    num_proc = num_proc or os.cpu_count() or 1
    tokenizer = resolve_tokenizer(spec, corpus, data_dir, selection, num_proc)
    folder = shard_folder(corpus, spec, tokenizer, data_dir, selection, shard_tokens)
    if os.path.lexists(folder):
        manifest, problems = _verified(folder, checksums)
        changes = corpus_changes(corpus, manifest) if manifest is not None and checksums else None
        if not problems and not changes:
            return Prepared(folder, manifest, tokenizer, built=False)
        if problems:
            said = damaged_message(folder, problems)
            if not build:
                raise DamagedShards(f"{said}; delete the folder and run prepare_data()")
            _require_writable(data_dir, folder.parent, f"{said}; it must be rebuilt")
            log.warning("%s; rebuilding it from the corpus", said)
        else:
            said = (
                f"corpus={corpus.spec!r} differs from what the shards in {folder} were built from: {changes.describe()}"
            )
            if not build:
                raise StaleShards(f"{said}; delete the folder and run prepare_data()")
            _require_writable(data_dir, folder.parent, f"{said}; they must be rebuilt")
            log.warning("%s; rebuilding the shards", said)
        _set_aside(folder)
    elif not build:
        raise FileNotFoundError(f"no shards at {folder}; call prepare_data() first")
    else:
        _require_writable(data_dir, folder.parent, f"the shards of corpus={corpus.spec!r} must be built in {folder}")
    manifest = build_shards(
        corpus,
        tokenizer,
        folder,
        tokenizer_spec=spec.spec,
        selection=selection,
        num_proc=num_proc,
        shard_tokens=shard_tokens,
        progress=progress,
    )
    return Prepared(folder, manifest, tokenizer, built=True)
