"""Building one shard folder: read and tokenize a corpus in order, split it, write the shards and the manifest.

Tokenization runs in up to ``num_proc`` worker processes (pool.py; they run only this module's worker side and
the torch-free modules it imports), one task per file (or per 512 records of a HF stream), results consumed in
corpus order so the output does not depend on the process count. The byte tokenizer is fast enough (~100 MB/s)
that below 256 MB per process it runs in-process: a pool would only add start-up and pickling. The folder is
written under a temporary name and renamed into place, so concurrent builders (DDP ranks, nodes on a shared disk)
cannot leave a partial one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from .corpus import PYTHON, STDLIB, CorpusSpec
from .documents import iter_hf_documents, read_file, read_records
from .leftovers import hold_build_lock, release_build_lock, remove_abandoned_builds
from .packing import SPLIT_RULE, assign_splits, split_value
from .pool import ordered_map, useful_processes
from .shards import FORMAT_VERSION, MANIFEST, SPLITS, ShardWriter, SplitReader, load_manifest
from .tokenizer import TextTokenizer

log = logging.getLogger(__name__)

_HF_CHUNK = 512


@dataclass(frozen=True)
class Selection:
    """Which documents of a corpus are used (caps in corpus order) and the validation fraction of the split."""

    val_fraction: float
    max_documents: int | None = None
    max_bytes: int | None = None


def content_key(obj) -> str:
    """A short hash of a JSON-able description (cache keys, the data fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Worker side (runs in worker processes: keep it free of torch)


@dataclass
class Chunk:
    """One task's output: a file's hash and skips, and its documents as (key, utf8_bytes, text or tokens)."""

    rel: str
    sha256: str | None
    nbytes: int
    docs: list[tuple[str, int, object]]
    skipped: str | None = None
    record_skips: Counter = field(default_factory=Counter)


_WORKER_TOKENIZER: TextTokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # processes give the parallelism
    _WORKER_TOKENIZER = TextTokenizer.from_str(tokenizer_json)


def _read_task(task, text_field: str, max_docs: int | None, max_bytes: int | None) -> Chunk:
    kind, payload = task
    fr = read_file(payload, text_field, max_docs, max_bytes) if kind == "file" else read_records(payload)
    docs = [(key, len(text.encode("utf-8")), text) for key, text in fr.docs]
    return Chunk(fr.rel, fr.sha256, fr.nbytes, docs, fr.skipped, fr.record_skips)


def _encode_task(
    task, text_field: str, max_docs: int | None, max_bytes: int | None, tokenizer: TextTokenizer | None = None
) -> Chunk:
    chunk = _read_task(task, text_field, max_docs, max_bytes)
    tokens = (tokenizer or _WORKER_TOKENIZER).encode_documents([text for _, _, text in chunk.docs])
    chunk.docs = [(key, nb, t) for (key, nb, _), t in zip(chunk.docs, tokens, strict=True)]
    return chunk


# ----------------------------------------------------------------------------------------------------------
# Parent side: documents in corpus order, up to the caps


def _tasks(corpus: CorpusSpec) -> Iterator[tuple]:
    if corpus.kind != "hf":
        yield from (("file", f) for f in corpus.files)
        return
    batch = []
    for record in iter_hf_documents(corpus.hf, corpus.text_field):
        batch.append(record)
        if len(batch) == _HF_CHUNK:
            yield ("records", batch)
            batch = []
    if batch:
        yield ("records", batch)


def _capped(chunks: Iterable[Chunk], max_documents: int | None, max_bytes: int | None) -> Iterator[tuple[Chunk, int]]:
    """(chunk, how many of its documents to keep), in order, until the caps are reached. Caps count kept
    documents and their UTF-8 bytes; the document that crosses max_bytes is kept."""
    n_docs = n_bytes = 0

    def full() -> bool:
        return (max_documents is not None and n_docs >= max_documents) or (
            max_bytes is not None and n_bytes >= max_bytes
        )

    for chunk in chunks:
        keep = 0
        for _, nb, _ in chunk.docs:
            if full():
                break
            keep += 1
            n_docs += 1
            n_bytes += nb
        yield chunk, keep
        if full():
            return


def _chunks(corpus: CorpusSpec, selection: Selection, num_proc: int, tokenizer: TextTokenizer | None):
    """(chunk, documents to keep) over the corpus: tokenized when ``tokenizer`` is given, else texts."""
    caps = dict(text_field=corpus.text_field, max_docs=selection.max_documents, max_bytes=selection.max_bytes)
    if tokenizer is None:
        fn, init = partial(_read_task, **caps), {}
    elif num_proc > 1:
        fn, init = partial(_encode_task, **caps), {"initializer": _init_worker, "initargs": (tokenizer.to_str(),)}
    else:
        fn, init = partial(_encode_task, **caps, tokenizer=tokenizer), {}
    return _capped(ordered_map(fn, _tasks(corpus), num_proc, **init), selection.max_documents, selection.max_bytes)


def _total_bytes(corpus: CorpusSpec) -> int | None:
    return corpus.total_bytes if corpus.kind != "hf" else None


def read_train_texts(corpus: CorpusSpec, selection: Selection, num_proc: int) -> Iterator[str]:
    """Texts of the train split (what the shards will hold), for training a tokenizer."""
    num_proc = useful_processes(num_proc, _total_bytes(corpus), fast=True)
    docs = (
        (key, text, None)
        for chunk, keep in _chunks(corpus, selection, num_proc, None)
        for key, _, text in chunk.docs[:keep]
    )
    return (text for split, _, text, _ in assign_splits(docs, selection.val_fraction) if split == "train")


# ----------------------------------------------------------------------------------------------------------
# Writing the splits


@dataclass
class _Outcome:
    """What writing the splits produced, for the fallbacks and the manifest."""

    files: list[dict] = field(default_factory=list)  # one entry per file read (not for HF streams)
    documents: int = 0  # kept, before the split
    record_skips: Counter = field(default_factory=Counter)
    hf_sha: Any = field(default_factory=hashlib.sha256)  # of the HF documents' keys and tokens
    metas: dict = field(default_factory=dict)  # the splits' manifest entries
    smallest_train: tuple | None = None  # (split value, key, train index, file entry): the val fallback
    val_fallback: str | None = None
    val_tail: dict | None = None


def _file_entry(chunk: Chunk, keep: int) -> dict:
    entry = {
        "path": chunk.rel,
        "sha256": chunk.sha256,
        "bytes": chunk.nbytes,
        "documents": keep,
        "val_documents": 0,  # counted as the documents are split
        "tokens": 0,
    }
    if chunk.skipped:
        entry["skipped"] = chunk.skipped
    if chunk.record_skips:
        entry["skipped_records"] = dict(chunk.record_skips)
    return entry


def _documents(chunks, corpus: CorpusSpec, out: _Outcome, advance) -> Iterator[tuple[str, object, dict]]:
    """(key, tokens, file entry) of every kept document; records each chunk's file entry and skips in ``out``."""
    for chunk, keep in chunks:
        entry = _file_entry(chunk, keep)
        out.record_skips.update(chunk.record_skips)
        if corpus.kind != "hf":
            out.files.append(entry)
        out.documents += keep
        for key, _, tokens in chunk.docs[:keep]:
            if corpus.kind == "hf":
                out.hf_sha.update(key.encode() + b"\0" + tokens.tobytes())
            yield key, tokens, entry
        advance(chunk.nbytes)


def _write_splits(
    corpus: CorpusSpec,
    tokenizer: TextTokenizer,
    folder: Path,
    selection: Selection,
    *,
    num_proc: int,
    shard_tokens: int,
    progress: bool,
) -> _Outcome:
    writers = {s: ShardWriter(folder, s, tokenizer.dtype, shard_tokens) for s in SPLITS}
    out = _Outcome()
    bar, task = _progress(progress, _total_bytes(corpus), f"tokenizing {corpus.name}")
    with bar:
        chunks = _chunks(corpus, selection, num_proc, tokenizer)
        docs = _documents(chunks, corpus, out, advance=partial(bar.advance, task))
        for split, key, tokens, entry in assign_splits(docs, selection.val_fraction):
            if split == "train":
                v = split_value(key)
                if out.smallest_train is None or v < out.smallest_train[0]:
                    out.smallest_train = (v, key, len(writers["train"].doc_starts), entry)
            writers[split].add(key, tokens, tokenizer.eos_id)
            entry["val_documents"] += split == "val"
            entry["tokens"] += len(tokens) + 1
    out.metas = {s: w.close() for s, w in writers.items()}
    return out


def _check_not_empty(corpus: CorpusSpec, out: _Outcome) -> None:
    if sum(m["documents"] for m in out.metas.values()):
        return
    skipped = [f for f in out.files if "skipped" in f]
    reasons = Counter(f["skipped"].split(" (")[0] for f in skipped)
    raise ValueError(
        f"corpus={corpus.spec!r} produced no documents: {len(out.files)} files read, "
        f"{len(skipped)} skipped ({dict(reasons)}), records skipped: {dict(out.record_skips)}"
        + (f" (is text_field={corpus.text_field!r} right?)" if out.record_skips.get("missing_field") else "")
        + (f"; the listing skipped {corpus.skipped}" if corpus.skipped else "")
    )


def _ensure_validation(folder: Path, out: _Outcome, tokenizer: TextTokenizer, shard_tokens: int) -> None:
    """Apply the split rule's fallbacks (packing.py) and record which one was used."""
    train, val = out.metas["train"], out.metas["val"]
    if val["documents"] == 0 and train["documents"] >= 2:
        _, key, index, entry = out.smallest_train
        out.metas = _move_to_val(folder, out.metas, index, tokenizer, shard_tokens)
        out.val_fallback = key
        entry["val_documents"] += 1
    elif out.documents == 1 and val["documents"] == 1 and train["documents"] == 1:  # assign_splits cut it
        out.val_tail = {"key": SplitReader(folder, train).keys()[0], "tokens": val["tokens"] - 1}


def _move_to_val(folder: Path, metas: dict, doc_index: int, tokenizer: TextTokenizer, shard_tokens: int) -> dict:
    """Rewrite the splits in ``folder`` with train document ``doc_index`` moved to val (one document in memory
    at a time: the new files are written beside the old ones, then moved over them)."""
    old = SplitReader(folder, metas["train"])
    keys = old.keys()
    starts = [int(s) for s in old.doc_starts] + [old.n_tokens]
    staging = folder / "rewrite"
    staging.mkdir()
    new = {s: ShardWriter(staging, s, tokenizer.dtype, shard_tokens) for s in SPLITS}
    for i, key in enumerate(keys):
        new["val" if i == doc_index else "train"].add(key, old.read(starts[i], starts[i + 1] - 1), tokenizer.eos_id)
    old.close()  # release the maps before the files go
    for meta in metas.values():
        for name in meta["checksums"]:
            (folder / name).unlink()
    metas = {s: w.close() for s, w in new.items()}
    for meta in metas.values():
        for name in meta["checksums"]:
            os.replace(staging / name, folder / name)
    staging.rmdir()
    return metas


# ----------------------------------------------------------------------------------------------------------
# The manifest and the folder


def _fingerprint_content(corpus: CorpusSpec, tokenizer: TextTokenizer, selection: Selection, out: _Outcome) -> dict:
    """What the data_fingerprint hashes: the data, not where it lives or how it is stored."""
    content = {
        "corpus": {
            "kind": corpus.kind,
            "spec": corpus.spec if corpus.kind != "files" else None,
            "hf": asdict(corpus.hf) if corpus.hf else None,
            "text_field": corpus.text_field,
            "hf_tokens_sha256": out.hf_sha.hexdigest() if corpus.kind == "hf" else None,
        },
        "files": [(f["path"], f["sha256"], f["documents"], f["val_documents"]) for f in out.files],
        "tokenizer": tokenizer.fingerprint,
        "val_fraction": selection.val_fraction,
        "val_fallback": out.val_fallback,
        "limits": [selection.max_documents, selection.max_bytes],
    }
    if out.val_tail is not None:  # only then: every other corpus keeps the fingerprint its checkpoints hold
        content["val_tail"] = out.val_tail
    return content


def _manifest(corpus, tokenizer, tokenizer_spec: str, selection: Selection, out: _Outcome, build: dict) -> dict:
    content = _fingerprint_content(corpus, tokenizer, selection, out)
    skipped_files = sum("skipped" in f for f in out.files)
    return {
        "format": FORMAT_VERSION,
        "data_fingerprint": content_key(content),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": {
            "spec": corpus.spec,
            "kind": corpus.kind,
            "root": corpus.root,
            "text_field": corpus.text_field,
            "python": sys.version.split()[0] if corpus.kind in (STDLIB, PYTHON) else None,
            # python: each site folder read, its top-level packages (files, bytes, owning distribution==version)
            # and every distribution installed there, as listed (files[] says what the caps let through)
            "sites": corpus.sites or None,
            "hf": content["corpus"]["hf"],
            "hf_tokens_sha256": content["corpus"]["hf_tokens_sha256"],
            "skipped": corpus.skipped,  # entries the listing passed over (links, FIFOs, ...), by reason
        },
        "tokenizer": {"spec": tokenizer_spec, **tokenizer.describe()},
        "split": {
            "rule": SPLIT_RULE,
            "val_fraction": selection.val_fraction,
            "val_fallback": out.val_fallback,
            "val_tail": out.val_tail,
        },
        "limits": {"max_documents": selection.max_documents, "max_bytes": selection.max_bytes},
        "splits": out.metas,
        "skipped": {"files": skipped_files, "records": dict(out.record_skips)},
        "files": out.files,
        "build": {**build, "source_bytes": sum(f["bytes"] for f in out.files)},
    }


def _log_skips(corpus: CorpusSpec, out: _Outcome, manifest_path: Path) -> None:
    skipped = [f for f in out.files if "skipped" in f]
    if skipped or out.record_skips:
        log.warning(
            "%s: skipped %d unreadable files %s and %d records %s; details in %s",
            corpus.spec,
            len(skipped),
            [f"{f['path']}: {f['skipped']}" for f in skipped[:5]],
            sum(out.record_skips.values()),
            dict(out.record_skips),
            manifest_path,
        )


def build_shards(
    corpus: CorpusSpec,
    tokenizer: TextTokenizer,
    folder: Path,
    *,
    tokenizer_spec: str,
    selection: Selection,
    num_proc: int,
    shard_tokens: int,
    progress: bool,
) -> dict:
    """Tokenize ``corpus`` into ``folder`` (created atomically) and return its manifest."""
    t0 = time.perf_counter()
    folder = Path(folder)
    if corpus.kind == "hf" and selection.max_documents is None and selection.max_bytes is None:
        log.warning("%s: no max_documents/max_bytes, so the whole stream will be tokenized", corpus.spec)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(folder.parent)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock = hold_build_lock(tmp)  # before the folder exists: see leftovers.py
    tmp.mkdir()
    try:
        num_proc = useful_processes(num_proc, _total_bytes(corpus), fast=tokenizer.is_byte)
        out = _write_splits(
            corpus, tokenizer, tmp, selection, num_proc=num_proc, shard_tokens=shard_tokens, progress=progress
        )
        _check_not_empty(corpus, out)
        _ensure_validation(tmp, out, tokenizer, shard_tokens)
        _log_skips(corpus, out, folder / MANIFEST)
        build = {"seconds": round(time.perf_counter() - t0, 3), "processes": num_proc}
        manifest = _manifest(corpus, tokenizer, tokenizer_spec, selection, out, build)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same build first; its folder is identical in content
            shutil.rmtree(tmp, ignore_errors=True)
            return load_manifest(folder)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release_build_lock(tmp, lock)


def _progress(enabled: bool, total: int | None, description: str):
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    progress = Progress(TextColumn("{task.description}"), *columns, disable=not enabled, transient=False)
    return progress, progress.add_task(description, total=total)
