"""The validation windows of a trained run, by identity: what the evaluation commands read from a checkpoint.

A window is named by its index in the validation split's packed stream (``packing.window_span``), so two runs
whose data settings give the same split (same corpus, tokenizer, val_fraction, seq_len: the same
``data_fingerprint``) name the same tokens by the same index, and their evaluations can be paired window by
window. The indices are chosen by the rule validation uses (``packing.evenly_spaced``): n windows here are the
windows a validation with ``val_batches * batch_size = n`` reads.
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
    return datamodule


def val_split(datamodule: LMDataModule) -> SplitReader:
    return datamodule.val_dataset().split


def available_windows(datamodule: LMDataModule) -> int:
    """Windows of seq_len + 1 tokens the validation split holds."""
    return num_windows(val_split(datamodule).n_tokens, datamodule.settings.seq_len)


def window_ids(datamodule: LMDataModule, n: int) -> np.ndarray:
    """min(n, available) window indices spread evenly over the validation split, increasing (validation's rule)."""
    if n < 1:
        raise ValueError(f"windows={n} must be >= 1")
    return evenly_spaced(available_windows(datamodule), n)


def read_windows(datamodule: LMDataModule, ids: np.ndarray) -> Tensor:
    """The tokens of validation windows ``ids``: int64 ``[len(ids), seq_len + 1]``."""
    split, seq_len = val_split(datamodule), datamodule.settings.seq_len
    return torch.from_numpy(np.stack([split.read(*window_span(int(i), seq_len)) for i in ids]))


def split_identity(datamodule: LMDataModule) -> dict:
    """What must match for two runs' window indices to name the same tokens."""
    return {
        "seq_len": datamodule.settings.seq_len,
        "data_fingerprint": datamodule.data_fingerprint,
        "tokenizer_fingerprint": datamodule.tokenizer_fingerprint,
        "val_windows_available": available_windows(datamodule),
    }
