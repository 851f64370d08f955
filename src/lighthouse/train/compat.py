"""The versions of torch and Lightning this project needs, and a startup check of the Lightning internals it uses.

pyproject.toml states the range (``torch>=2.6``: ``torch.compiler.set_stance``; ``lightning>=2.6,<2.7``: the CLI's
``--weights_only``, and private internals below that a minor release may rename). pip keeps an install inside that
range; this check covers an environment changed afterwards (``pip install -U lightning``), where a renamed internal
would otherwise surface as an AttributeError deep in a run, or a silently skipped override.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

TESTED_RANGE = "torch>=2.6 and lightning>=2.6,<2.7"

# (owner, attribute, what relies on it). Private names: Lightning does not promise them across minor versions.
INTERNALS = (
    (ModelCheckpoint, "_ModelCheckpoint__resolve_ckpt_dir", "train/safety.py: where --ckpt_path last looks"),
    (ModelCheckpoint, "_save_checkpoint", "checkpoint/last.py: the save at the end and on SIGTERM"),
    (ModelCheckpoint, "_save_last_checkpoint", "checkpoint/last.py: the save at the end and on SIGTERM"),
    (ModelCheckpoint, "_monitor_candidates", "checkpoint/last.py: the save at the end and on SIGTERM"),
    (LightningCLI, "_parse_ckpt_path", "train/cli.py: the config, not the checkpoint, decides the model"),
    (torch.compiler, "set_stance", "lit_module.py and transformer.py: eager validation of compiled blocks"),
)


class VersionError(ValueError):
    """An installed torch or Lightning outside the tested range (a ValueError: exit 2 with one message)."""


def missing_internals() -> list[str]:
    return [
        f"{getattr(owner, '__name__', owner)}.{name} ({used})"
        for owner, name, used in INTERNALS
        if not hasattr(owner, name)
    ]


def check_versions() -> None:
    """Refuse to start when an internal this project relies on is gone, naming it and the tested range."""
    missing = missing_internals()
    if missing:
        import lightning

        raise VersionError(
            f"this torch {torch.__version__} / lightning {lightning.__version__} lacks what Lighthouse relies on: "
            f"{'; '.join(missing)}. Install versions in the tested range, {TESTED_RANGE} "
            "(pip install -e . does: it reads pyproject.toml)"
        )
