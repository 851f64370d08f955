"""Checkpoint IO: all-or-nothing writes with a checksum, and loads that never run code and never accept damage.

Save: write a temporary file (hashed as it is written), fsync, then rename it over the target and write
``<target>.sha256`` beside it. A process killed mid-write leaves only a ``*.tmp-<pid>`` file, never a truncated
checkpoint; the old checksum is removed before the rename, so a kill between the two renames leaves a valid file
that is merely unverified, never one that looks damaged. A URL (``s3://``, ``gs://``, ``memory://``: any fsspec
protocol) is saved the same way through fsspec: temporary object, then a move over the target and the checksum
beside it. Where the filesystem renames, that is atomic; on object stores the move is a server-side copy, and an
upload only becomes visible once complete, so a reader never sees a partial checkpoint either way. A URL whose
filesystem is not installed (``s3fs`` for ``s3://``) is refused with its name, never written as a local path.

Load, from a local path or any URL (``http(s)://``, or an fsspec protocol such as ``s3://``): the checksum is
checked where there is one, the file is unpickled with ``weights_only=True`` unless the caller passes
``weights_only=False`` explicitly (``--weights_only false``), and weights or optimizer state holding a NaN or inf
are refused. Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lighthouse.checkpoint.files import SUFFIX, Verdict, describe_last_good, sidecar, sidecar_text, verify
from lighthouse.checkpoint.guards import checkpoint_state, non_finite_names

REMOTE_TIMEOUT_S = 120


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, not a checkpoint, unsafe to unpickle or holding NaN/inf."""


class CheckpointWriteError(OSError):
    """A save that failed on the filesystem (a full disk, a folder made read-only mid-run): the message names the
    file and the newest checkpoint that is still intact, and the process ends with it instead of a traceback."""


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (renames into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingWriter:
    """A write-only file that hashes what passes through it (torch.save only writes and flushes)."""

    def __init__(self, f) -> None:
        self._f, self.digest = f, hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data) -> int:
        self.digest.update(data)
        try:
            return self._f.write(data)
        except OSError as err:
            # torch.save reports a failed write as "RuntimeError: unexpected pos ...": keep the real cause
            self.error = err
            raise

    def flush(self) -> None:
        self._f.flush()


def is_remote(path) -> bool:
    text = str(path)
    return "://" in text and not text.startswith("file://")


def remote_filesystem(url: str):
    """(fsspec filesystem, path within it) for a checkpoint URL; a protocol that is unknown or whose package is not
    installed is refused by name, before anything is written."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise CheckpointError(
            f"cannot use checkpoint location {url}: {err} (remote checkpoints go through fsspec; install the "
            "package for that protocol, or use a local path)"
        ) from None


def _read_remote(url: str) -> bytes:
    if url.startswith(("http://", "https://")):
        with urllib.request.urlopen(url, timeout=REMOTE_TIMEOUT_S) as response:
            return response.read()
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()


def _fetch(url: str) -> bytes:
    try:
        return _read_remote(url)
    except (OSError, ValueError, ImportError) as err:
        raise CheckpointError(f"cannot fetch checkpoint {url}: {err}") from None


def _remote_verdict(url: str, data: bytes) -> Verdict:
    checksum_url = url + SUFFIX  # not a Path: that would fold the '//' of the scheme
    try:
        recorded = _read_remote(checksum_url).decode("utf-8", errors="replace").split()
    except (OSError, ValueError):
        return Verdict("unverified", f"no readable {checksum_url}")
    actual = hashlib.sha256(data).hexdigest()
    if recorded and recorded[0].lower() == actual:
        return Verdict("ok")
    return Verdict("damaged", f"its sha256 is {actual[:16]}..., {checksum_url} disagrees")


def _unpickle(source, name: str, map_location, weights_only: bool, folder: Path | None, mmap: bool = False) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except Exception as err:
        # torch's own message suggests weights_only=False, which is the one thing not to do with a bad file:
        # say what is wrong instead.
        cause = err.__context__ if err.__context__ is not None else err
        lines = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {lines[0][:160]}" if lines else type(cause).__name__
        if "GLOBAL" in reason:
            detail = (
                f"unpickling it would import something other than tensors and plain data ({reason}); "
                "loading with weights_only=True refuses that because it could run code. A Lighthouse "
                "checkpoint never needs it: the file is damaged or was not written by Lighthouse"
            )
        else:
            detail = f"it is damaged (truncated or overwritten) or not a checkpoint ({reason})"
        hint = f" Newest usable checkpoint in that folder: {describe_last_good(folder)}." if folder else ""
        raise CheckpointError(f"cannot load checkpoint {name}: {detail}.{hint}") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint IO with all-or-nothing, checksummed writes and safe, verified loads (``trainer.plugins``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if is_remote(path):
            self._save_remote(checkpoint, str(path))
            return
        try:
            self._save_local(checkpoint, Path(path))
        except OSError as err:
            if isinstance(err, CheckpointWriteError):
                raise
            folder = Path(path).parent
            raise CheckpointWriteError(
                f"cannot save checkpoint {path}: {err.strerror or err} ({err.filename or folder}). The checkpoints "
                f"saved before are intact; the newest usable one is {describe_last_good(folder)}. Free space or "
                "fix the folder, then resume with --ckpt_path last"
            ) from err

    def _save_local(self, checkpoint: dict[str, Any], target: Path) -> None:
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        for stale in [*folder.glob(f"{target.name}.tmp-*"), *folder.glob(f"{sidecar(target).name}.tmp-*")]:
            stale.unlink(missing_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        try:
            self._write_files(checkpoint, target, tmp)
        except OSError:
            # A partial file on a full disk only keeps it full (the logger's last writes need room too).
            for partial in (tmp, sidecar(tmp)):
                try:
                    partial.unlink(missing_ok=True)
                except OSError:
                    pass
            raise

    def _write_files(self, checkpoint: dict[str, Any], target: Path, tmp: Path) -> None:
        folder = target.parent
        with open(tmp, "wb") as f:
            writer = _HashingWriter(f)
            try:
                self.write(checkpoint, writer)
            except Exception:
                if writer.error is not None:
                    raise writer.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        checksum, checksum_tmp = sidecar(target), sidecar(tmp)
        with open(checksum_tmp, "w", encoding="utf-8") as f:
            f.write(sidecar_text(writer.digest.hexdigest(), target))
            f.flush()
            os.fsync(f.fileno())
        checksum.unlink(missing_ok=True)
        fsync_path(folder)  # the old checksum is gone for good before the new file takes the name
        os.replace(tmp, target)
        os.replace(checksum_tmp, checksum)
        fsync_path(folder)

    def _save_remote(self, checkpoint: dict[str, Any], url: str) -> None:
        """The local save's steps through fsspec (see the module docstring); strings throughout, since a Path
        would fold the scheme's '//' (``s3://b/x`` became the local folder ``s3:/b/x``)."""
        fs, target = remote_filesystem(url)
        tmp, checksum = f"{target}.tmp-{os.getpid()}", target + SUFFIX
        checksum_tmp = f"{checksum}.tmp-{os.getpid()}"
        try:
            fs.makedirs(target.rpartition("/")[0], exist_ok=True)  # a no-op on object stores
            with fs.open(tmp, "wb") as f:
                writer = _HashingWriter(f)
                self.write(checkpoint, writer)
            with fs.open(checksum_tmp, "wb") as f:
                f.write(sidecar_text(writer.digest.hexdigest(), target).encode("utf-8"))
            if fs.exists(checksum):
                fs.rm(checksum)  # as locally: a moment with no checksum, never one with a stale checksum
            fs.mv(tmp, target)
            fs.mv(checksum_tmp, checksum)
        except OSError as err:
            for leftover in (tmp, checksum_tmp):
                try:
                    if fs.exists(leftover):
                        fs.rm(leftover)
                except OSError:
                    pass
            raise OSError(f"cannot save checkpoint {url}: {err}") from err

    def write(self, checkpoint: dict[str, Any], f) -> None:
        """Serialise into an open file; the one place a test can slow the write down."""
        torch.save(checkpoint, f)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)  # fsspec: local paths and URLs alike
        if is_remote(path):
            fs, target = remote_filesystem(str(path))
            if fs.exists(target + SUFFIX):
                fs.rm(target + SUFFIX)
        else:
            sidecar(path).unlink(missing_ok=True)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only: bool | None = None):
        return load_verified(path, map_location, weights_only)


def load_verified(
    path,
    map_location=lambda storage, loc: storage,
    weights_only: bool | None = None,
    mmap: bool = False,
    check_finite: bool = True,
) -> dict:
    """A checkpoint from a local path or URL: checksum checked, weights-only unless ``weights_only=False`` is passed
    explicitly, weights and optimizer state finite (``check_finite``). ``mmap`` maps a local file's tensors instead
    of reading them."""
    weights_only = True if weights_only is None else weights_only
    name = str(path)
    if is_remote(path):
        data = _fetch(name)
        verdict, source, folder = _remote_verdict(name, data), io.BytesIO(data), None
    else:
        local = Path(path)
        if not local.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {local}")
        verdict, source, folder = verify(local), local, local.parent
    if not verdict.usable:
        hint = f" Newest usable checkpoint in that folder: {describe_last_good(folder)}." if folder else ""
        raise CheckpointError(f"checkpoint {name} is damaged: {verdict.detail}.{hint}")
    checkpoint = _unpickle(source, name, map_location, weights_only, folder, mmap and folder is not None)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"cannot load checkpoint {name}: it holds a {type(checkpoint).__name__}, not a dict")
    bad = non_finite_names(checkpoint_state(checkpoint)) if check_finite else []
    if bad:
        raise CheckpointError(
            f"checkpoint {name} holds non-finite values ({', '.join(bad)}): it cannot be trained from. "
            f"It predates the checks that keep NaN out of checkpoints; use an older one."
        )
    return checkpoint


# What the metadata of a torch.distributed.checkpoint folder (a sharded FSDP checkpoint) may name: its own
# dataclasses and enums, tensor sizes, dtypes, layouts and paths. DCP reads it with a plain pickle.load.
_DCP_GLOBALS = {
    "torch.distributed.checkpoint.metadata": None,  # None: any name defined there (all plain data)
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = _DCP_GLOBALS.get(module, set())
        is_dtype = module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype))
        if not is_dtype and not (allowed is None or name in allowed):
            raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not sharded-checkpoint metadata")
        return super().find_class(module, name)


def check_sharded_checkpoint(folder: str | Path) -> None:
    """Refuse a sharded (DCP) checkpoint folder whose ``.metadata`` would run code when torch unpickles it."""
    metadata = Path(folder) / ".metadata"
    if not metadata.is_file():
        return  # not a DCP folder: Lightning's own loader says what it is missing
    try:
        with open(metadata, "rb") as f:
            _MetadataUnpickler(f).load()
    except Exception as err:
        raise CheckpointError(
            f"cannot load sharded checkpoint {folder}: its .metadata is damaged or would run code when unpickled "
            f"({type(err).__name__}: {str(err)[:160]})"
        ) from None
