"""The validation windows of a trained run, by identity: what the evaluation commands read from a checkpoint.

A window is named by its index in the validation split's packed stream (``packing.window_span``), so two runs
whose data settings give the same split (same corpus, tokenizer, val_fraction, seq_len: the same
``data_fingerprint``) name the same tokens by the same index, and their evaluations can be paired window by
window. The indices are chosen by the rule validation uses (``packing.evenly_spaced``): n windows here are the
windows a validation with ``val_batches * batch_size = n`` reads. The training split's windows are named the
same way (its raw stream, before any training mix), for probes that may read either.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch import Tensor

from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.packing import evenly_spaced, num_windows, window_span
from lighthouse.data.settings import DataSettings
from lighthouse.data.shards import SplitReader
from lighthouse.eval.passkey import split_reader

SPLITS = ("val", "train")


def run_datamodule(checkpoint: dict, data_dir: str | None = None) -> LMDataModule:
    """The data module the run trained with, from the settings its checkpoint saved, set up for validation.

    Only DataSettings' fields are passed on (Lightning also stores its own keys there, e.g. ``_instantiator``).
    ``data_dir`` overrides where the shards are kept (a run copied to another machine)."""
    saved = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(saved, dict):
        raise ValueError(
            "the checkpoint holds no data settings (datamodule_hyper_parameters): it was not trained with "
            "lighthouse's LMDataModule, so its validation windows are unknown"
        )
    accepted = {f.name for f in fields(DataSettings)}
    settings = {k: v for k, v in saved.items() if k in accepted}
    settings["progress"] = False
    if data_dir:
        settings["data_dir"] = data_dir
    datamodule = LMDataModule(**settings)
    datamodule.setup("validate")
    check_fingerprints(checkpoint, datamodule)
    return datamodule


def check_fingerprints(checkpoint: dict, datamodule: LMDataModule) -> None:
    """Refuse data that is not what the run trained on, where the checkpoint records what that was (its data module
    state; older checkpoints have none and pass). A ``bpe:N`` tokenizer is trained on the corpus it finds, so a
    changed corpus silently gives token ids that mean something else; a changed corpus alone gives other windows.
    The tokenizer comes first: it is the worse of the two."""
    saved = checkpoint.get(LMDataModule.__qualname__)  # where Lightning keeps LMDataModule.state_dict()
    if not isinstance(saved, dict):
        return
    built = {"tokenizer": datamodule.tokenizer_fingerprint, "data": datamodule.data_fingerprint}
    for what, now in built.items():
        recorded = saved.get(f"{what}_fingerprint")
        if recorded is not None and recorded != now:
            raise ValueError(
                f"the {what} fingerprint differs from the checkpoint's (--ckpt records {recorded!r}, the data "
                f"settings give {now!r}): the corpus or tokenizer changed since training, so the model would be scored "
                "on other tokens; point the run's data settings (or --data-dir) at the data it trained on"
            )


def split_of(datamodule: LMDataModule, split: str = "val") -> SplitReader:
    """The packed stream of the 'val' or 'train' split (the raw corpus: no training mix)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    return split_reader(datamodule, split)


def available_windows(datamodule: LMDataModule, split: str = "val") -> int:
    """Windows of seq_len + 1 tokens the split holds."""
    return num_windows(split_of(datamodule, split).n_tokens, datamodule.settings.seq_len)


def window_ids(datamodule: LMDataModule, n: int, split: str = "val") -> np.ndarray:
    """min(n, available) window indices spread evenly over the split, increasing (validation's rule)."""
    if n < 1:
        raise ValueError(f"windows={n} must be >= 1")
    return evenly_spaced(available_windows(datamodule, split), n)


def read_windows(datamodule: LMDataModule, ids: np.ndarray, split: str = "val") -> Tensor:
    """The tokens of windows ``ids`` of the split: int64 ``[len(ids), seq_len + 1]``."""
    reader, seq_len = split_of(datamodule, split), datamodule.settings.seq_len
    return torch.from_numpy(np.stack([reader.read(*window_span(int(i), seq_len)) for i in ids]))


def split_identity(datamodule: LMDataModule) -> dict:
    """What must match for two runs' window indices to name the same tokens."""
    return {
        "seq_len": datamodule.settings.seq_len,
        "data_fingerprint": datamodule.data_fingerprint,
        "tokenizer_fingerprint": datamodule.tokenizer_fingerprint,
        "val_windows_available": available_windows(datamodule, "val"),
    }
