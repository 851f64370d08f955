"""The project's own records in a Lightning checkpoint: written at every save, read back for checkpoints of every
version of this project.

``lighthouse_model``: the model config with every size resolved (``dataclasses.asdict``). Checkpoints older than
this record carry the config only in Lightning's hyperparameters, as ``arch`` or, before the ``model.arch.*``
rename, as ``model``.

``lighthouse_tokenizer``: the tokenizer's JSON (tens of kB for bytes, about 1 MB for a 32k BPE), so export and
generation need nothing but the checkpoint. Checkpoints without it name their tokenizer through the data module's
fingerprint and settings, and the file is looked for (``saved_tokenizer``).

Plain data only: a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lighthouse.checkpoint.io import CheckpointError
from lighthouse.data.tokenizer import TextTokenizer, byte_tokenizer
from lighthouse.model.config import ModelConfig
from lighthouse.tool_args import about

MODEL_KEY = "lighthouse_model"
TOKENIZER_KEY = "lighthouse_tokenizer"
# Model config fields renamed since checkpoints were first written: old name -> today's.
RENAMED_MODEL_FIELDS = {"max_seq_len": "seq_len"}  # one name, data.seq_len's, from the config to the op


def write_records(checkpoint: dict, config: ModelConfig, tokenizer: object | None) -> None:
    """Add the model config and, when training has a text tokenizer, its JSON to the checkpoint dict being saved."""
    checkpoint[MODEL_KEY] = dataclasses.asdict(config)
    if isinstance(tokenizer, TextTokenizer):  # a run without a data module (tests, hand-made loops) has none
        checkpoint[TOKENIZER_KEY] = tokenizer.to_str()


def saved_model_config(checkpoint: dict) -> ModelConfig:
    """The model config the checkpoint was trained with (sizes resolved, backends as configured)."""
    saved = checkpoint.get(MODEL_KEY)
    if saved is None:
        hparams = checkpoint.get("hyper_parameters", {})
        saved = hparams.get("arch", hparams.get("model"))
    if not isinstance(saved, dict):
        raise ValueError(
            f"checkpoint holds no model config (neither {MODEL_KEY!r} nor hyper_parameters "
            "'arch'/'model'): it was not written by this project's LitLM"
        )
    return model_config_from(saved)


def model_config_from(saved: dict) -> ModelConfig:
    """A model config as a checkpoint stores it (a plain dict of fields), older field names read as today's."""
    fields = {RENAMED_MODEL_FIELDS.get(name, name): value for name, value in saved.items()}
    try:
        return ModelConfig(**fields)
    except TypeError as err:  # fields this project never had: another project's checkpoint
        raise CheckpointError(f"the checkpoint's model config is not this project's ({err})") from None


def check_tokenizer_override(override: str) -> None:
    """``--tokenizer`` of the tools after training: 'byte' or a file, checked before any checkpoint is read."""
    if override != "byte" and not Path(override).is_file():
        # A mistyped path is the usual case: say so first, rather than only what a valid value looks like.
        problem = "no such file" if not Path(override).exists() else "not a file"
        raise ValueError(f"--tokenizer={override!r}: {problem} (valid: 'byte' or the path of a tokenizer .json)")


def saved_tokenizer(checkpoint: dict, override: str | None = None) -> TextTokenizer:
    """The tokenizer the checkpoint was trained with, checked against its fingerprint when one was stored.

    Looked for in order: ``override`` ('byte' or a tokenizer .json), the JSON the checkpoint carries, the byte
    tokenizer when the fingerprint or data config says bytes, the configured tokenizer file, the BPE files
    under the data config's ``data_dir/tokenizers/``.
    """
    data_state = checkpoint.get("LMDataModule", {})
    fingerprint = data_state.get("tokenizer_fingerprint")
    data_hparams = checkpoint.get("datamodule_hyper_parameters", {})
    if override is not None:
        check_tokenizer_override(override)
        with about("--tokenizer", override):
            tok = byte_tokenizer() if override == "byte" else TextTokenizer.from_file(override)
        if fingerprint is not None and tok.fingerprint != fingerprint:
            raise ValueError(
                f"--tokenizer {override!r} has fingerprint {tok.fingerprint}, but the checkpoint was "
                f"trained with tokenizer fingerprint {fingerprint}"
            )
        return tok
    if TOKENIZER_KEY in checkpoint:
        return TextTokenizer.from_str(checkpoint[TOKENIZER_KEY])
    if fingerprint == byte_tokenizer().fingerprint or (fingerprint is None and data_hparams.get("tokenizer") == "byte"):
        return byte_tokenizer()
    candidates = [Path(data_hparams["tokenizer"])] if str(data_hparams.get("tokenizer", "")).endswith(".json") else []
    if data_hparams.get("data_dir"):
        candidates += sorted((Path(data_hparams["data_dir"]) / "tokenizers").glob("*.json"))
    for path in candidates:
        if fingerprint is not None and path.is_file():
            tok = TextTokenizer.from_file(path)
            if tok.fingerprint == fingerprint:
                return tok
    raise ValueError(
        f"the checkpoint does not carry its tokenizer (tokenizer {data_hparams.get('tokenizer')!r}, fingerprint "
        f"{fingerprint}) and no matching file was found; pass the tokenizer .json it was trained with (--tokenizer)"
    )
