"""Checks shared by the commands run after training (export, generate, plot and the evaluations: passkey, recall,
lookahead, window_losses): each bad argument is one ``ValueError`` naming the flag, its value and the valid range, which
``lighthouse.train.exits.run`` prints as one message with exit code 2 (the same path training's config errors take),
never a traceback.

``entry_point(main)`` is what each command's ``__main__`` calls.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# "http:/host/x": a URL whose "//" was folded into one "/" (by pathlib, or a shell variable joined with one).
_FOLDED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]")


def entry_point(main: Callable[[list[str] | None], object]) -> None:
    """Run a command's ``main`` with the project's exit codes (lighthouse.train.exits) and exit with its code."""
    from lighthouse.train import exits

    raise SystemExit(exits.run(main, sys.argv[1:]))


@contextmanager
def about(flag: str, value) -> Iterator[None]:
    """Name ``flag`` in a user error raised inside (a missing or damaged file says which argument gave it)."""
    try:
        yield
    except (ValueError, OSError) as err:
        raise ValueError(f"{flag}={str(value)!r} is invalid: {err}") from None


def summary(doc: str) -> str:
    """A module docstring's first paragraph on one line: a command's --help description (its first line alone can
    stop mid-sentence); one that introduces the usage lines after it ends with a full stop instead of its colon."""
    text = " ".join(doc.split("\n\n")[0].split())
    return text[:-1] + "." if text.endswith(":") else text


def require(ok: bool, flag: str, value, valid: str) -> None:
    """Raise ``ValueError("--flag=value: valid")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{flag}={value!r} is invalid: {valid}")


def finite_at_least(flag: str, value: float, lowest: float, note: str = "") -> None:
    require(math.isfinite(value) and value >= lowest, flag, value, f"must be a finite number >= {lowest}{note}")


def int_in(flag: str, value: int, lowest: int, highest: int | None = None, why: str = "") -> None:
    """``value`` must lie in [lowest, highest] (no upper bound when ``highest`` is None)."""
    valid = f"must be an integer in [{lowest}, {highest}]" if highest is not None else f"must be an integer >= {lowest}"
    require(lowest <= value and (highest is None or value <= highest), flag, value, valid + why)


def local_path(flag: str, value: str) -> None:
    """Refuse a URL whose '//' was folded into '/': read as a local path it would name a folder called 'http:'."""
    if _FOLDED_URL.match(str(value)):
        scheme = str(value).split(":", 1)[0]
        raise ValueError(
            f"{flag}={value!r} is invalid: it looks like a URL whose '//' was folded into '/' (write {scheme}://...)"
        )


def output_folder(flag: str, value: str, create: bool = True) -> Path:
    """A local folder the command can write into, checked before any work is done; created unless ``create`` is
    False (then only the nearest existing folder above it is checked, and nothing is written for a failed run). A
    blank value is refused: as a path it is the current folder, which nobody names that way on purpose."""
    require(str(value).strip() != "", flag, value, "it must name a folder, not be blank (is a shell variable unset?)")
    local_path(flag, value)
    if "://" in str(value):
        raise ValueError(f"{flag}={value!r} is invalid: it must be a local folder (write there, then copy)")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}={value!r} is invalid: it is an existing file, not a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag}={value!r} is invalid: {str(existing)!r} is a file, so no folder can be made there")
    writable(flag, existing)
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{flag}={value!r} is invalid: the folder cannot be created ({err.strerror})") from None
    return path


def writable(flag: str, folder: Path) -> None:
    """A real write into ``folder`` (os.access says yes to root on a read-only mount, and no to some ACLs)."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{flag}={str(folder)!r} is invalid: cannot write there ({err.strerror})") from None


def result_file(flag: str, value: str, reads: Sequence[str | Path] = ()) -> Path:
    """The path of a JSON result the command will write (output_file's checks on the name; its folder not yet)."""
    require(str(value).strip() != "", flag, value, "it must name a file, not be blank (is a shell variable unset?)")
    local_path(flag, value)
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"{flag}={value!r} is invalid: it is a folder; name a file")
    if path.is_file():
        if any(Path(r).is_file() and path.samefile(r) for r in reads):
            raise ValueError(f"{flag}={value!r} is invalid: it is the file this command reads; name another")
        with open(path, "rb") as f:
            if f.read(1) not in (b"{", b""):
                raise ValueError(f"{flag}={value!r} is invalid: it exists and holds no JSON result; name another file")
    return path


def output_file(flag: str, value: str, reads: Sequence[str | Path] = ()) -> Path:
    """A file the command will write: not blank, not a folder, not a file the command ``reads`` (an evaluation's
    --ckpt: writing the result over it destroyed the checkpoint) nor an existing file that holds no JSON object
    (results are JSON; a checkpoint or log named by mistake would be lost); its folder must exist and be writable."""
    path = result_file(flag, value, reads)
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{flag}={value!r} is invalid: the folder {str(folder)!r} does not exist")
    writable(flag, folder)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """``text`` in ``path``, all or nothing: written and fsynced beside it under this process's name, then renamed
    over it, so a full disk or a kill leaves the previous file whole; writers of the same text at once (DDP ranks
    saving one tokenizer) race harmlessly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone already after the rename


def write_json(flag: str, path: str | Path, data: object) -> Path:
    """``data`` as a tool's JSON result in ``path``, all or nothing (write_text_atomic: a full disk left a cut-off
    file where the previous result was); a failure says ``flag``."""
    path = Path(path)
    try:
        write_text_atomic(path, json.dumps(data, indent=1))
    except OSError as err:
        raise ValueError(f"{flag}={str(path)!r}: the result could not be written ({err.strerror or err})") from None
    return path


def checked_device(flag: str, name: str):
    """The device ``name``, refused with the flag named when it is not a device or not present here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag}={name!r} is invalid: it must be a torch device such as 'cpu' or 'cuda'") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag}={name!r} is invalid: this machine has no MPS device (use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{flag}={name!r} is invalid: the tools run on 'cpu', 'cuda' or 'cuda:N' (and 'mps' on a Mac)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag}={name!r} is invalid: this machine has no CUDA device (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag}={name!r} is invalid: CUDA devices here are 0..{torch.cuda.device_count() - 1}")
    return device
