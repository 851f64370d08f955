"""A command-line or config mistake as a short message: the error first, a close match for a mistyped key, and
where to find the valid options, instead of jsonargparse's usage dump (over a hundred lines, error at the end)."""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable

# How jsonargparse and argparse name an unknown key: a config file's key, or a flag on the command line.
_UNKNOWN_KEY = (
    re.compile(r"does not accept option '([\w.\-]+)'"),
    re.compile(r"unrecognized arguments: --([\w.\-]+)"),
    re.compile(r"Key '([\w.\-]+)' is not expected"),
)


def unknown_key(message: str) -> str | None:
    for pattern in _UNKNOWN_KEY:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


def close_match(key: str, known: Iterable[str]) -> str | None:
    """The known key a typo most likely meant (``model.arch.n_layer`` -> ``model.arch.n_layers``), or None.
    Keys are compared within the same group first, so a short field name is not matched to another group's."""
    known = sorted(set(known))
    group = key.rpartition(".")[0]
    same_group = [k for k in known if k.rpartition(".")[0] == group]
    for pool in (same_group, known):
        found = difflib.get_close_matches(key, pool, n=1, cutoff=0.75)
        if found:
            return found[0]
    return None


# configs/ lives in the repository, not in the installed package (pip install . copies only src/lighthouse).
MISSING_CONFIG_HINT = (
    "  the shipped configs (configs/demo.yaml, ...) come with a clone of the repository, not with the installed "
    "package: run from the repository root, or pass the path of your own YAML file"
)


def describe(message: str, known: Iterable[str], prog: str) -> str:
    """The text to print for a parse error ``message``: its first line, a suggestion, the details, the help hint."""
    first, _, details = str(message).strip().partition("\n")
    lines = [f"error: {first}"]
    key = unknown_key(first)
    match = close_match(key, known) if key else None
    if match:
        lines.append(f"  did you mean {match}?")
    if first.startswith('Parser key "config": File does not exist'):
        lines.append(MISSING_CONFIG_HINT)
    if details.strip():
        lines.append(details.rstrip())
    lines.append(f"(`{prog} --help` lists every option with its documentation)")
    return "\n".join(lines)


def report(message: str, known: Iterable[str], prog: str) -> None:
    print(describe(message, known, prog), file=sys.stderr, flush=True)
