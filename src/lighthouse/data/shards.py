"""Tokenize a corpus once into binary shards (+ manifest) under ``data/shards/``, and read them back.

Layout of one cache folder ``data/shards/<corpus>-<tokenizer>-<key>/``::

    manifest.json            what was read (files + sha256), tokenizer fingerprint, split rule, token counts
    train-00000.bin ...      the packed train stream (packing.py), raw little-endian uint16/uint32,
                             cut every ``shard_tokens`` tokens (windows may span two shards)
    train-docs.npy           int64 start of each document in the train stream
    train-keys.txt           the key of each document (doc_ids index this list), one a line
    val-*                    the same for the validation split

``key`` hashes the corpus listing (paths, sizes, mtimes), the tokenizer fingerprint, the split and the
caps: a second run with the same inputs reuses the folder. The folder is built under a temporary name
and renamed into place, so concurrent builders (DDP ranks on a shared disk) cannot leave a partial one.

Tokenization runs in up to ``num_proc`` worker processes (which run only corpus.py + tokenizer.py code),
one task per file (or per 512 records of a HF stream), results consumed in corpus order so the output
does not depend on the process count. The byte tokenizer is fast enough (~100 MB/s) that below 256 MB
per process it runs in-process: a pool would only add start-up and pickling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from .corpus import (
    STDLIB,
    CorpusSpec,
    FileRead,
    _valid_text,
    is_val,
    iter_hf_documents,
    read_file,
    split_value,
)
from .tokenizer import TextTokenizer, TokenizerSpec, byte_tokenizer, train_bpe

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
SPLIT_RULE = "val iff int.from_bytes(sha256(key)[:8], 'big') / 2**64 < val_fraction; key = relpath or relpath#record"
_HF_CHUNK = 512


# ----------------------------------------------------------------------------------------------------------
# Reading shards


class SplitReader:
    """Random access to one split's packed stream and document table. Picklable (maps open lazily)."""

    def __init__(self, folder: str | os.PathLike, meta: dict):
        self.folder = Path(folder)
        self.meta = meta
        self.n_tokens = int(meta["tokens"])
        self.n_documents = int(meta["documents"])
        self.dtype = np.dtype(meta["dtype"])
        self.shard_tokens = int(meta["shard_tokens"])
        self._maps: list[np.ndarray] | None = None
        self._doc_starts: np.ndarray | None = None

    def __getstate__(self):
        return {**self.__dict__, "_maps": None, "_doc_starts": None}

    @property
    def maps(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [
                np.memmap(self.folder / s["file"], dtype=self.dtype, mode="r", shape=(s["tokens"],))
                for s in self.meta["shards"]
            ]
        return self._maps

    @property
    def doc_starts(self) -> np.ndarray:
        if self._doc_starts is None:
            self._doc_starts = np.load(self.folder / self.meta["doc_starts"], mmap_mode="r")
        return self._doc_starts

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, across shard boundaries."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"[{start}, {stop}) outside the stream of {self.n_tokens} tokens")
        out = np.empty(stop - start, dtype=np.int64)
        pos = start
        while pos < stop:
            s, off = divmod(pos, self.shard_tokens)
            n = min(stop - pos, self.shard_tokens - off)
            out[pos - start : pos - start + n] = self.maps[s][off : off + n]
            pos += n
        return out

    def keys(self) -> list[str]:
        return (self.folder / self.meta["keys"]).read_text(encoding="utf-8").splitlines()


def load_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: no {MANIFEST}; not a shard folder (or an interrupted build: delete it)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: shard format {manifest.get('format')}, this code reads {FORMAT_VERSION}; delete the folder"
        )
    return manifest


def open_split(folder: str | os.PathLike, split: str, tokenizer: TextTokenizer) -> SplitReader:
    """Open a split, refusing shards made by a different tokenizer."""
    manifest = load_manifest(folder)
    made_with = manifest["tokenizer"]
    if made_with["fingerprint"] != tokenizer.fingerprint:
        raise ValueError(
            f"shards in {folder} were tokenized with tokenizer {made_with['spec']!r} "
            f"(fingerprint {made_with['fingerprint']}, vocab {made_with['vocab_size']}), but the configured "
            f"tokenizer has fingerprint {tokenizer.fingerprint} (vocab {tokenizer.vocab_size}); "
            f"use the matching tokenizer "
            f"or delete the folder to re-tokenize"
        )
    return SplitReader(folder, manifest["splits"][split])


# ----------------------------------------------------------------------------------------------------------
# Writing shards


class _ShardWriter:
    def __init__(self, folder: Path, split: str, dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, np.dtype(dtype), shard_tokens
        self.n_tokens = 0
        self.doc_starts: list[int] = []
        self.shards: list[dict] = []
        self._f = None
        self._keys = open(folder / f"{split}-keys.txt", "w", encoding="utf-8")

    def add(self, key: str, tokens: np.ndarray, eos_id: int) -> None:
        self.doc_starts.append(self.n_tokens)
        self._keys.write(key.replace("\n", " ") + "\n")
        doc = np.empty(len(tokens) + 1, dtype=self.dtype)
        doc[:-1] = tokens
        doc[-1] = eos_id
        pos = 0
        while pos < len(doc):
            if self._f is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            n = min(len(doc) - pos, self.shard_tokens - self.shards[-1]["tokens"])
            self._f.write(doc[pos : pos + n].astype("<" + self.dtype.str[1:], copy=False).tobytes())
            self.shards[-1]["tokens"] += n
            pos += n
        self.n_tokens += len(doc)

    def _open_next(self) -> None:
        if self._f is not None:
            self._f.close()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f = open(self.folder / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> dict:
        if self._f is not None:
            self._f.close()
        self._keys.close()
        np.save(self.folder / f"{self.split}-docs.npy", np.asarray(self.doc_starts, dtype=np.int64))
        return {
            "documents": len(self.doc_starts),
            "tokens": self.n_tokens,
            "dtype": self.dtype.name,
            "shard_tokens": self.shard_tokens,
            "shards": self.shards,
            "doc_starts": f"{self.split}-docs.npy",
            "keys": f"{self.split}-keys.txt",
        }


# ----------------------------------------------------------------------------------------------------------
# Worker side (runs in worker processes: keep it free of torch)


@dataclass
class _Chunk:
    """One task's output: a file's hash and skips, and its documents as (key, utf8_bytes, text or tokens)."""

    rel: str
    sha256: str | None
    nbytes: int
    docs: list[tuple[str, int, object]]
    skipped: str | None = None
    record_skips: Counter = field(default_factory=Counter)


_WORKER_TOKENIZER: TextTokenizer | None = None


def _init_worker(tokenizer_json: str | None) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # processes give the parallelism
    _WORKER_TOKENIZER = TextTokenizer.from_str(tokenizer_json) if tokenizer_json else None


def _read_task(task, text_field: str, max_docs: int | None, max_bytes: int | None) -> _Chunk:
    kind, payload = task
    if kind == "file":
        fr: FileRead = read_file(payload, text_field, max_docs, max_bytes)
    else:  # a list of (key, text) records from a HF stream
        skips: Counter = Counter()
        fr = FileRead("", None, 0, [(k, t) for k, t in payload if _valid_text(t, skips)], None, skips)
    docs = [(key, len(text.encode("utf-8")), text) for key, text in fr.docs]
    return _Chunk(fr.rel, fr.sha256, fr.nbytes, docs, fr.skipped, fr.record_skips)


def _encode_task(
    task, text_field: str, max_docs: int | None, max_bytes: int | None, tokenizer: TextTokenizer | None = None
) -> _Chunk:
    chunk = _read_task(task, text_field, max_docs, max_bytes)
    tok = tokenizer or _WORKER_TOKENIZER
    tokens = tok.encode_batch([text for _, _, text in chunk.docs])
    chunk.docs = [(key, nb, t) for (key, nb, _), t in zip(chunk.docs, tokens, strict=True)]
    return chunk


# ----------------------------------------------------------------------------------------------------------
# Parent side


def _tasks(corpus: CorpusSpec) -> Iterator[tuple]:
    if corpus.kind == "hf":
        batch = []
        for record in iter_hf_documents(corpus.hf, corpus.text_field):
            batch.append(record)
            if len(batch) == _HF_CHUNK:
                yield ("records", batch)
                batch = []
        if batch:
            yield ("records", batch)
    else:
        for f in corpus.files:
            yield ("file", f)


def _ordered_map(fn: Callable, tasks: Iterable, num_proc: int, tokenizer: TextTokenizer | None) -> Iterator[_Chunk]:
    """fn over tasks, results in task order; with num_proc > 1 in worker processes, at most 2 * num_proc
    tasks in flight (so a cap, an error or an unbounded HF stream never reads far ahead)."""
    if num_proc <= 1:
        for task in tasks:
            yield fn(task, tokenizer=tokenizer) if tokenizer is not None else fn(task)
        return
    # fork on Linux (no re-import of __main__, which may import torch and Lightning: seconds per process);
    # the children run only numpy and tokenizers code. spawn elsewhere (fork is unsafe on macOS).
    # A ProcessPoolExecutor, not a multiprocessing.Pool: a worker that dies (killed, out of memory) raises
    # BrokenProcessPool here instead of leaving the parent waiting forever for its result.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    tok_json = tokenizer.to_str() if tokenizer is not None else None
    pending: deque = deque()
    with ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker, initargs=(tok_json,)) as pool:
        try:
            for i, task in enumerate(tasks):
                pending.append(_submit_first(pool, fn, task) if i == 0 else pool.submit(fn, task))
                if len(pending) >= 2 * num_proc:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early (a cap, an error): drop what has not started
            for future in pending:
                future.cancel()


def _submit_first(pool: ProcessPoolExecutor, fn: Callable, task) -> Future:
    """Submit with TOKENIZERS_PARALLELISM=false in the environment: the first submit forks the workers, which
    then take their parallelism from processes (and tokenizers prints no fork warning)."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return pool.submit(fn, task)
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _useful_processes(num_proc: int, total_bytes: int | None, fast: bool) -> int:
    """Processes worth starting: one per 256 MB when the work is fast (reading, byte tokenizer: ~100 MB/s
    in one process, so below that a pool only adds start-up and pickling), one per 4 MB for BPE (~1 MB/s)."""
    if total_bytes is None:
        return num_proc
    per_proc = (256 if fast else 4) * 2**20
    return max(1, min(num_proc, total_bytes // per_proc))


def _capped(chunks: Iterable[_Chunk], max_documents: int | None, max_bytes: int | None) -> Iterator[tuple[_Chunk, int]]:
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


def _progress(enabled: bool, total: int | None, description: str):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
    task = progress.add_task(description, total=total)
    return progress, task


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def read_train_texts(
    corpus: CorpusSpec,
    *,
    val_fraction: float,
    max_documents: int | None,
    max_bytes: int | None,
    num_proc: int,
) -> Iterator[str]:
    """Texts of the train split (the documents the shards will hold), for training a tokenizer."""
    fn = partial(_read_task, text_field=corpus.text_field, max_docs=max_documents, max_bytes=max_bytes)
    total = corpus.total_bytes if corpus.kind != "hf" else None
    num_proc = _useful_processes(num_proc, total, fast=True)
    for chunk, keep in _capped(_ordered_map(fn, _tasks(corpus), num_proc, None), max_documents, max_bytes):
        for key, _, text in chunk.docs[:keep]:
            if not is_val(key, val_fraction):
                yield text


def build_shards(
    corpus: CorpusSpec,
    tokenizer: TextTokenizer,
    folder: Path,
    *,
    tokenizer_spec: str,
    val_fraction: float,
    max_documents: int | None,
    max_bytes: int | None,
    num_proc: int,
    shard_tokens: int,
    progress: bool,
) -> dict:
    """Tokenize ``corpus`` into ``folder`` (created atomically) and return its manifest."""
    t0 = time.perf_counter()
    folder = Path(folder)
    if corpus.kind == "hf" and max_documents is None and max_bytes is None:
        log.warning("%s: no max_documents/max_bytes, so the whole stream will be tokenized", corpus.spec)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        writers = {s: _ShardWriter(tmp, s, tokenizer.dtype, shard_tokens) for s in SPLITS}
        files, record_skips = [], Counter()
        # (split value, key, train index, file index) of the train doc that becomes val if val ends up empty
        min_train = None
        hf_sha = hashlib.sha256()
        fn = partial(_encode_task, text_field=corpus.text_field, max_docs=max_documents, max_bytes=max_bytes)
        total = corpus.total_bytes if corpus.kind != "hf" else None
        num_proc = _useful_processes(num_proc, total, fast=tokenizer.is_byte)
        bar, task = _progress(progress, total, f"tokenizing {corpus.name}")
        with bar:
            chunks = _ordered_map(fn, _tasks(corpus), num_proc, tokenizer)
            for chunk, keep in _capped(chunks, max_documents, max_bytes):
                entry = {
                    "path": chunk.rel,
                    "sha256": chunk.sha256,
                    "bytes": chunk.nbytes,
                    "documents": keep,
                    "val_documents": 0,
                    "tokens": 0,
                }
                for key, _, tokens in chunk.docs[:keep]:
                    split = "val" if is_val(key, val_fraction) else "train"
                    if split == "train":
                        v = split_value(key)
                        if min_train is None or v < min_train[0]:
                            min_train = (v, key, len(writers["train"].doc_starts), len(files))
                    writers[split].add(key, tokens, tokenizer.eos_id)
                    entry["val_documents"] += split == "val"
                    entry["tokens"] += len(tokens) + 1
                    if corpus.kind == "hf":
                        hf_sha.update(key.encode() + b"\0" + tokens.tobytes())
                if chunk.skipped:
                    entry["skipped"] = chunk.skipped
                if chunk.record_skips:
                    entry["skipped_records"] = dict(chunk.record_skips)
                    record_skips.update(chunk.record_skips)
                if corpus.kind != "hf":
                    files.append(entry)
                bar.advance(task, chunk.nbytes)
        metas = {s: w.close() for s, w in writers.items()}

        n_docs = sum(m["documents"] for m in metas.values())
        skipped_files = [f for f in files if "skipped" in f]
        if n_docs == 0:
            reasons = Counter(f["skipped"].split(" (")[0] for f in skipped_files)
            raise ValueError(
                f"corpus={corpus.spec!r} produced no documents: {len(files)} files read, "
                f"{len(skipped_files)} skipped ({dict(reasons)}), records skipped: {dict(record_skips)}"
                + (f" (is text_field={corpus.text_field!r} right?)" if record_skips.get("missing_field") else "")
            )
        val_fallback = None
        if metas["val"]["documents"] == 0 and metas["train"]["documents"] >= 2:
            # Small corpora: keep a validation split by moving the train document with the smallest split
            # value (the first to turn val as val_fraction grows), so the choice is still a function of keys.
            val_fallback = min_train[1]
            metas = _move_to_val(tmp, metas, min_train[2], tokenizer, shard_tokens)
            if files:
                files[min_train[3]]["val_documents"] += 1

        if skipped_files or record_skips:
            log.warning(
                "%s: skipped %d unreadable files %s and %d records %s; details in %s",
                corpus.spec,
                len(skipped_files),
                [f"{f['path']}: {f['skipped']}" for f in skipped_files[:5]],
                sum(record_skips.values()),
                dict(record_skips),
                folder / MANIFEST,
            )
        content = {
            "corpus": {
                "kind": corpus.kind,
                "spec": corpus.spec if corpus.kind != "files" else None,
                "hf": corpus.hf.__dict__ if corpus.hf else None,
                "text_field": corpus.text_field,
                "hf_tokens_sha256": hf_sha.hexdigest() if corpus.kind == "hf" else None,
            },
            "files": [(f["path"], f["sha256"], f["documents"], f["val_documents"]) for f in files],
            "tokenizer": tokenizer.fingerprint,
            "val_fraction": val_fraction,
            "val_fallback": val_fallback,
            "limits": [max_documents, max_bytes],
        }
        manifest = {
            "format": FORMAT_VERSION,
            "data_fingerprint": _key(content),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "corpus": {
                "spec": corpus.spec,
                "kind": corpus.kind,
                "root": corpus.root,
                "text_field": corpus.text_field,
                "python": sys.version.split()[0] if corpus.kind == STDLIB else None,
                "hf": content["corpus"]["hf"],
                "hf_tokens_sha256": content["corpus"]["hf_tokens_sha256"],
            },
            "tokenizer": {"spec": tokenizer_spec, **tokenizer.describe()},
            "split": {"rule": SPLIT_RULE, "val_fraction": val_fraction, "val_fallback": val_fallback},
            "limits": {"max_documents": max_documents, "max_bytes": max_bytes},
            "splits": metas,
            "skipped": {"files": len(skipped_files), "records": dict(record_skips)},
            "files": files,
            "build": {
                "seconds": round(time.perf_counter() - t0, 3),
                "processes": num_proc,
                "source_bytes": sum(f["bytes"] for f in files),
            },
        }
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


def _move_to_val(folder: Path, metas: dict, doc_index: int, tokenizer: TextTokenizer, shard_tokens: int) -> dict:
    """Rewrite the splits in ``folder`` with train document ``doc_index`` moved to val."""
    old = SplitReader(folder, metas["train"])
    keys = old.keys()
    starts = np.append(np.asarray(old.doc_starts), old.n_tokens)
    docs = [(keys[i], old.read(int(starts[i]), int(starts[i + 1]) - 1)) for i in range(len(keys))]
    old._maps = old._doc_starts = None  # release the maps before overwriting the files
    for s in metas["train"]["shards"]:
        (folder / s["file"]).unlink()
    new = {s: _ShardWriter(folder, s, tokenizer.dtype, shard_tokens) for s in SPLITS}
    for i, (key, toks) in enumerate(docs):
        new["val" if i == doc_index else "train"].add(key, toks, tokenizer.eos_id)
    return {s: w.close() for s, w in new.items()}


# ----------------------------------------------------------------------------------------------------------
# Orchestration: tokenizer + shards for (corpus, tokenizer spec, split, caps)


@dataclass
class Prepared:
    folder: Path
    manifest: dict
    tokenizer: TextTokenizer
    built: bool  # False when an existing cache folder was reused


def resolve_tokenizer(
    spec: TokenizerSpec,
    corpus: CorpusSpec,
    data_dir: Path,
    *,
    val_fraction: float,
    max_documents: int | None,
    max_bytes: int | None,
    num_proc: int,
) -> TextTokenizer:
    """The tokenizer for ``spec``: built in (byte), loaded (file), or loaded/trained and saved (bpe)."""
    if spec.kind == "byte":
        return byte_tokenizer()
    if spec.kind == "file":
        return TextTokenizer.from_file(spec.path)
    key = _key(
        {
            "corpus": corpus.listing_key(),
            "val_fraction": val_fraction,
            "limits": [max_documents, max_bytes],
            "vocab": spec.vocab_size,
        }
    )
    path = data_dir / "tokenizers" / f"bpe{spec.vocab_size}-{corpus.name}-{key}.json"
    if path.is_file():
        return TextTokenizer.from_file(path)
    t0 = time.perf_counter()
    texts = read_train_texts(
        corpus, val_fraction=val_fraction, max_documents=max_documents, max_bytes=max_bytes, num_proc=num_proc
    )
    tok = train_bpe(texts, spec.vocab_size)
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


def prepare(
    corpus: CorpusSpec,
    spec: TokenizerSpec,
    data_dir: str | os.PathLike,
    *,
    val_fraction: float,
    max_documents: int | None = None,
    max_bytes: int | None = None,
    num_proc: int | None = None,
    shard_tokens: int = 2**28,
    progress: bool = True,
    build: bool = True,
) -> Prepared:
    """Find or build the shards of (corpus, tokenizer, split, caps). ``build=False`` raises if missing."""
    data_dir = Path(data_dir)
    num_proc = num_proc or os.cpu_count() or 1
    caps = dict(val_fraction=val_fraction, max_documents=max_documents, max_bytes=max_bytes)
    tokenizer = resolve_tokenizer(spec, corpus, data_dir, num_proc=num_proc, **caps)
    key = _key(
        {
            "format": FORMAT_VERSION,
            "corpus": corpus.listing_key(),
            "tokenizer": tokenizer.fingerprint,
            "shard_tokens": shard_tokens,
            **caps,
        }
    )
    label = spec.kind if spec.kind == "byte" else f"{spec.kind}{tokenizer.vocab_size}"
    folder = data_dir / "shards" / f"{corpus.name}-{label}-{key}"
    if (folder / MANIFEST).is_file():
        return Prepared(folder, load_manifest(folder), tokenizer, built=False)
    if not build:
        raise FileNotFoundError(f"no shards at {folder}; call prepare_data() first")
    manifest = build_shards(
        corpus,
        tokenizer,
        folder,
        tokenizer_spec=spec.spec,
        num_proc=num_proc,
        shard_tokens=shard_tokens,
        progress=progress,
        **caps,
    )
    return Prepared(folder, manifest, tokenizer, built=True)
