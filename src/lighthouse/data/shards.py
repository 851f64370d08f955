"""The on-disk shard format: a folder's layout, its manifest, the writer and reader of a split, integrity checks.

Layout of one cache folder ``data/shards/<corpus>-<tokenizer>-<key>/``::

    manifest.json            what was read (files + sha256), tokenizer fingerprint, split rule, token counts,
                             and the size and sha256 of every other file of the folder
    train-00000.bin ...      the packed train stream (packing.py), raw little-endian uint16/uint32,
                             cut every ``shard_tokens`` tokens (windows may span two shards)
    train-docs.npy           int64 start of each document in the train stream
    train-keys.txt           the key of each document, one a line
    val-*                    the same for the validation split

Integrity: the writer hashes every byte it writes (no second read). ``open_split`` checks every file's size
against the manifest (one stat a file, on every rank), so a truncated shard is an error naming the file instead
of numpy's "mmap length is greater than file size". ``verify`` re-hashes the files, in threads over files (hashlib
releases the GIL): about 1 s per GB per core on the 2-core test box, run once per node by prepare_data (cache.py),
which rebuilds a damaged folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .tokenizer import TextTokenizer

FORMAT_VERSION = 2  # 2: the manifest records each file's size and sha256
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_HASH_BLOCK = 1 << 24


class DamagedShards(ValueError):
    """A shard folder whose files do not match its manifest (truncated, overwritten, missing)."""


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_HASH_BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            sha.update(view[:n])
    return sha.hexdigest()


class ShardWriter:
    """Writes one split: documents appended in order, each followed by EOS, cut into shard files."""

    def __init__(self, folder: Path, split: str, dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, np.dtype(dtype), shard_tokens
        self.n_tokens = 0
        self.doc_starts: list[int] = []
        self.shards: list[dict] = []
        self.checksums: dict[str, dict] = {}
        self._f = None
        self._sha = None
        self._keys_name = f"{split}-keys.txt"
        self._keys = open(folder / self._keys_name, "wb")
        self._keys_sha = hashlib.sha256()
        self._little_endian = self.dtype.newbyteorder("<")

    def add(self, key: str, tokens: np.ndarray, eos_id: int) -> None:
        self.doc_starts.append(self.n_tokens)
        line = (key.replace("\n", " ") + "\n").encode("utf-8")
        self._keys.write(line)
        self._keys_sha.update(line)
        doc = np.empty(len(tokens) + 1, dtype=self._little_endian)
        doc[:-1] = tokens
        doc[-1] = eos_id
        pos = 0
        while pos < len(doc):
            if self._f is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._open_next()
            n = min(len(doc) - pos, self.shard_tokens - self.shards[-1]["tokens"])
            data = doc[pos : pos + n].tobytes()
            self._f.write(data)
            self._sha.update(data)
            self.shards[-1]["tokens"] += n
            pos += n
        self.n_tokens += len(doc)

    def _close_shard(self) -> None:
        if self._f is not None:
            self._f.close()
            last = self.shards[-1]
            self.checksums[last["file"]] = {
                "bytes": last["tokens"] * self.dtype.itemsize,
                "sha256": self._sha.hexdigest(),
            }

    def _open_next(self) -> None:
        self._close_shard()
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._f = open(self.folder / name, "wb")
        self._sha = hashlib.sha256()
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> dict:
        """Finish the split's files; return its entry of the manifest's ``splits``."""
        self._close_shard()
        self.checksums[self._keys_name] = {"bytes": self._keys.tell(), "sha256": self._keys_sha.hexdigest()}
        self._keys.close()
        docs_name = f"{self.split}-docs.npy"
        np.save(self.folder / docs_name, np.asarray(self.doc_starts, dtype=np.int64))
        docs_path = self.folder / docs_name
        self.checksums[docs_name] = {"bytes": docs_path.stat().st_size, "sha256": _sha256_file(docs_path)}
        return {
            "documents": len(self.doc_starts),
            "tokens": self.n_tokens,
            "dtype": self.dtype.name,
            "shard_tokens": self.shard_tokens,
            "shards": self.shards,
            "doc_starts": docs_name,
            "keys": self._keys_name,
            "checksums": self.checksums,
        }


class SplitReader:
    """Random access to one split's packed stream and document table. Picklable (maps open lazily)."""

    def __init__(self, folder: str | os.PathLike, meta: dict):
        self.folder = Path(folder)
        self.meta = meta
        self.n_tokens = int(meta["tokens"])
        self.n_documents = int(meta["documents"])
        self.dtype = np.dtype(meta["dtype"]).newbyteorder("<")
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
        # Split on "\n" only, the one separator add() keeps out of keys: splitlines() (and text mode's newline
        # translation) would also split a key at a "\r" or "\u2028" a file name may hold, and the keys would no
        # longer line up with the documents.
        text = (self.folder / self.meta["keys"]).read_bytes().decode("utf-8")
        return text.split("\n")[:-1] if text else []

    def close(self) -> None:
        """Drop the memory maps (before the files are replaced)."""
        self._maps = self._doc_starts = None


def load_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder}: no {MANIFEST}; not a shard folder (or an interrupted build: delete it)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DamagedShards(f"{path} is not valid JSON ({e}): the folder is damaged; delete it to rebuild") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: shard format {manifest.get('format')}, this code reads {FORMAT_VERSION}; delete the folder"
        )
    return manifest


def _files(manifest: dict) -> dict[str, dict]:
    """{file name: {"bytes", "sha256"}} of every file the manifest describes."""
    return {name: entry for split in SPLITS for name, entry in manifest["splits"][split]["checksums"].items()}


def count_problems(manifest: dict) -> list[str]:
    """Token and document counts that disagree with the file sizes the manifest records (checked against the
    files by ``size_problems``): every count that sizes an allocation is then bounded by bytes on disk, so a
    manifest claiming 10^12 tokens is refused instead of allocating for them."""
    problems = []
    for split in SPLITS:
        try:
            meta = manifest["splits"][split]
            itemsize = np.dtype(meta["dtype"]).itemsize
            sizes = meta["checksums"]
            tokens, shard_tokens, documents = int(meta["tokens"]), int(meta["shard_tokens"]), int(meta["documents"])
            held = 0
            for shard in meta["shards"]:
                n = int(shard["tokens"])
                if not 0 <= n <= shard_tokens or n * itemsize != sizes[shard["file"]]["bytes"]:
                    problems.append(f"{split} shard {shard['file']}: {n} tokens do not fit its recorded size")
                held += n
            docs_bytes = sizes[meta["doc_starts"]]["bytes"]
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"the manifest's {split} entry is malformed ({type(e).__name__}: {e})")
            continue
        if tokens != held:
            problems.append(f"the manifest says {split} holds {tokens} tokens, its shard files hold {held}")
        if not 0 <= documents <= tokens or docs_bytes < 8 * documents:
            problems.append(f"the manifest's {split} document count {documents} does not fit its files")
    return problems


def size_problems(folder: str | os.PathLike, manifest: dict) -> list[str]:
    """Files that are missing or whose size differs from the manifest (cheap: one stat a file), and counts that
    disagree with those sizes."""
    problems = count_problems(manifest)
    if problems:
        return problems
    for name, entry in _files(manifest).items():
        try:
            size = (Path(folder) / name).stat().st_size
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if size != entry["bytes"]:
            problems.append(f"{name} has {size} bytes, the manifest says {entry['bytes']} (truncated or replaced)")
    return problems


def verify(folder: str | os.PathLike, manifest: dict, threads: int | None = None) -> list[str]:
    """Every file's size and sha256 against the manifest; the problems found (none: the folder is intact)."""
    problems = size_problems(folder, manifest)
    if problems:
        return problems
    files = _files(manifest)
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        digests = dict(zip(files, pool.map(_digest_or_error, [Path(folder) / n for n in files]), strict=True))
    return [_mismatch(name, digests[name]) for name in files if digests[name] != files[name]["sha256"]]


def _digest_or_error(path: Path) -> str:
    try:
        return _sha256_file(path)
    except OSError as e:  # removed or unreadable while hashing (another process set the folder aside)
        return f"unreadable ({type(e).__name__})"


def _mismatch(name: str, digest: str) -> str:
    if digest.startswith("unreadable"):
        return f"{name} is {digest}"
    return f"{name} does not match its sha256 (overwritten or corrupted)"


def damaged_message(folder: str | os.PathLike, problems: list[str]) -> str:
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return f"shard cache {folder} is damaged: {shown}"


def open_split(folder: str | os.PathLike, split: str, tokenizer: TextTokenizer) -> SplitReader:
    """Open a split, refusing shards made by a different tokenizer or files whose sizes disagree with the manifest."""
    manifest = load_manifest(folder)
    made_with = manifest["tokenizer"]
    if made_with["fingerprint"] != tokenizer.fingerprint:
        raise ValueError(
            f"shards in {folder} were tokenized with tokenizer {made_with['spec']!r} "
            f"(fingerprint {made_with['fingerprint']}, vocab {made_with['vocab_size']}), but the configured "
            f"tokenizer has fingerprint {tokenizer.fingerprint} (vocab {tokenizer.vocab_size}); "
            f"use the matching tokenizer or delete the folder to re-tokenize"
        )
    problems = size_problems(folder, manifest)
    if problems:
        raise DamagedShards(
            damaged_message(folder, problems) + "; run again to rebuild it (prepare_data rebuilds a damaged "
            "cache from the corpus) or delete the folder"
        )
    return SplitReader(folder, manifest["splits"][split])
