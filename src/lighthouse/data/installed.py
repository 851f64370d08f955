"""What the running interpreter has installed: its site-packages/dist-packages folders and the distributions in them.

Used by the ``python`` corpus (corpus.py) to list the folders it reads and to record, in the manifest, which
top-level packages were read and which distribution (name and version, from importlib.metadata) owns each, so a
report can say exactly what the model was trained on. The standard library only, no torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import site
from collections.abc import Iterable
from pathlib import Path

SITE_FOLDER_NAMES = ("site-packages", "dist-packages")
# Entries of a site folder that hold no package of their own (metadata, caches).
_NOT_PACKAGES = (".dist-info", ".egg-info", ".data")


def site_folders() -> list[Path]:
    """The interpreter's site folders that exist, in import order, each once (by real path).

    ``site.getsitepackages()`` is the venv's folder in a venv and the system ones otherwise; the user folder is
    added when the interpreter reads it. Folders added by ``.pth`` files or PYTHONPATH are not site folders
    (an editable install's sources are the project, not an installed package)."""
    folders = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        folders.append(site.getusersitepackages())
    seen, out = set(), []
    for folder in folders:
        path = Path(folder)
        real = os.path.realpath(path)
        if path.is_dir() and real not in seen:
            seen.add(real)
            out.append(path)
    return out


def folder_labels(folders: Iterable[Path]) -> list[str]:
    """A short, stable key prefix per folder: its name ('site-packages'), with '~2', '~3' ... for a name that
    repeats (Debian has several 'dist-packages'). Keys then do not depend on where the interpreter lives, so the
    same packages get the same document keys (and the same split) on every machine."""
    counts: dict[str, int] = {}
    labels = []
    for folder in folders:
        name = folder.name or "site"
        counts[name] = counts.get(name, 0) + 1
        labels.append(name if counts[name] == 1 else f"{name}~{counts[name]}")
    return labels


def top_level(rel: str) -> str:
    """The top-level package a path inside a site folder belongs to: 'torch/nn/x.py' -> 'torch', 'six.py' -> 'six'."""
    first = rel.split("/", 1)[0]
    return first[: -len(".py")] if "/" not in rel and first.endswith(".py") else first


def _owned_top_levels(dist: importlib.metadata.Distribution) -> set[str]:
    """Top-level names a distribution installed (from its RECORD, else top_level.txt)."""
    names = set()
    for f in dist.files or ():
        parts = f.parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(_NOT_PACKAGES):
            continue
        names.add(top_level("/".join(parts[:2]) if len(parts) > 1 else parts[0]))
    if not names:
        text = dist.read_text("top_level.txt") or ""
        names = {line.strip() for line in text.splitlines() if line.strip()}
    return names


def distributions(folder: Path) -> list[dict]:
    """Every distribution installed in ``folder``: name, version and its top-level names, sorted by name."""
    found = {}
    for dist in importlib.metadata.distributions(path=[str(folder)]):
        name = dist.metadata["Name"]
        if not name:  # a broken METADATA: nothing to name it by
            continue
        found.setdefault(name, {"name": name, "version": dist.version, "top_level": sorted(_owned_top_levels(dist))})
    return [found[k] for k in sorted(found, key=str.lower)]


def describe_folder(folder: Path, label: str, files: Iterable[tuple[str, int]]) -> dict:
    """The manifest entry of one site folder: where it is, its distributions, and per top-level package listed
    (``files``: (path relative to the folder, size) of the .py files listed) the file count, bytes and owners."""
    dists = distributions(folder)
    owners: dict[str, list[str]] = {}
    for d in dists:
        for name in d["top_level"]:
            owners.setdefault(name, []).append(f"{d['name']}=={d['version']}")
    packages: dict[str, dict] = {}
    for rel, size in files:
        name = top_level(rel)
        entry = packages.setdefault(name, {"name": name, "files": 0, "bytes": 0, "distributions": owners.get(name, [])})
        entry["files"] += 1
        entry["bytes"] += size
    return {
        "label": label,
        "path": str(folder),
        "packages": [packages[k] for k in sorted(packages)],
        "distributions": [{"name": d["name"], "version": d["version"]} for d in dists],
    }
