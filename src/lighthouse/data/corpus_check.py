"""Whether the corpus files a shard folder was built from still hold what the build read.

The folder's key hashes the listing (paths, sizes, mtimes): cheap, but blind to an edit that puts the size and
mtime back (``touch -r``, a tool that preserves timestamps, a same-size restore) and to a file that the build
could not open and that has become readable since (a chmod changes only the ctime). The manifest already holds
what is needed to see both: each file read with the sha256 of its raw bytes (hashed while it was read), and each
file skipped because it could not be opened (``sha256`` null). ``corpus_changes`` re-hashes every file the
build read and retries every file it could not open.

Every file, not a subset chosen by a stat: no stat field that a user can restore (size, mtime) says the bytes
are the same, and the one they cannot (ctime) is coarse enough on Linux (a jiffy) that a write landing in the
tick of the build's read leaves it unchanged. Files past the caps (``max_documents``, ``max_bytes``) were never
read, so they are not in the manifest and cannot change the shards unless a file before them changes, which is
caught. Cost, 2 threads on the 2-core test box with a warm page cache: 0.05 s for the stdlib (1790 files, 31.5 MB),
0.5 s for the installed Python sources (14.5k files, 240 MB; their shards verify in 0.27 s); data/README.md has
the details. A Hugging Face stream has no files to re-hash.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .corpus import CorpusSpec
from .documents import open_regular

_BLOCK = 1 << 20
_NAMED = 3  # files named in the log line; the counts are complete


class StaleShards(ValueError):
    """A shard folder built from other contents of the same corpus listing (rebuilding was not allowed)."""


@dataclass
class CorpusChanges:
    """Files whose bytes differ from the build's read, and skipped files that now open (relative paths)."""

    changed: list[str] = field(default_factory=list)
    now_readable: list[str] = field(default_factory=list)
    now_unreadable: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.now_readable or self.now_unreadable)

    def describe(self) -> str:
        """One line: the counts, and the first few names of each kind."""
        parts = []
        for names, what in (
            (self.changed, "corpus file{s} changed (content differs from the build's sha256)"),
            (self.now_readable, "skipped file{s} now readable"),
            (self.now_unreadable, "file{s} no longer readable"),
        ):
            if names:
                more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
                shown = ", ".join(names[:_NAMED])
                parts.append(f"{len(names)} {what.format(s='' if len(names) == 1 else 's')}: {shown}{more}")
        return "; ".join(parts)


def _sha256_or_none(path: str) -> str | None:
    """sha256 of the file's raw bytes (what documents.read_file hashes), or None when it cannot be opened or
    read. Opened as the build opens it: never blocking on a FIFO, refusing anything but a regular file."""
    try:
        with open_regular(path) as f:
            sha = hashlib.sha256()
            # read() rather than readinto a fresh buffer: most corpus files are small, and zeroing a 1 MB
            # buffer per file cost a third of the time on the stdlib's 1790 files
            while chunk := f.read(_BLOCK):
                sha.update(chunk)
            return sha.hexdigest()
    except OSError:
        return None


def corpus_changes(corpus: CorpusSpec, manifest: dict, threads: int | None = None) -> CorpusChanges:
    """Compare the files in ``manifest["files"]`` with the corpus on disk now (hashing in threads over files:
    hashlib releases the GIL)."""
    out = CorpusChanges()
    files = manifest.get("files")
    if not isinstance(files, list):
        out.changed.append("(the manifest's files list is missing or malformed)")
        return out
    recorded = [f for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)]
    if len(recorded) < len(files):  # a hand-edited or damaged manifest: what it covers is unknown, so rebuild
        out.changed.append(f"({len(files) - len(recorded)} malformed entries in the manifest's files)")
    if not recorded:
        return out
    paths = {f.rel: f.path for f in corpus.files}
    threads = threads or min(8, os.cpu_count() or 1)
    # A path the listing no longer holds cannot share the folder's key; if it ever does, it reads as unreadable.
    with ThreadPoolExecutor(threads) as pool:
        digests = list(pool.map(lambda f: _sha256_or_none(paths[f["path"]]) if f["path"] in paths else None, recorded))
    for entry, digest in zip(recorded, digests, strict=True):
        before = entry.get("sha256")
        if digest == before:
            continue
        if before is None:
            out.now_readable.append(entry["path"])
        elif digest is None:
            out.now_unreadable.append(entry["path"])
        else:
            out.changed.append(entry["path"])
    return out
