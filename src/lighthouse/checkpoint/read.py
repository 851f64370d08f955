"""Read a training checkpoint for use after training: the dense model, the training phase, the tokenizer.

Every path here loads with ``torch.load(weights_only=True)``: a checkpoint is data, never code. It knows the
checkpoints of every version of this project: the records LitLM writes, old forms included, are read by
lighthouse.checkpoint.records; the phase record of earlier versions by ``training_phase``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from lighthouse.checkpoint.guards import non_finite_names
from lighthouse.checkpoint.io import CheckpointError, is_remote, load_verified
from lighthouse.checkpoint.records import check_tokenizer_override, saved_model_config, saved_tokenizer
from lighthouse.data.tokenizer import TextTokenizer
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer
from lighthouse.tool_args import about

CONSOLIDATE = "python -m lightning.pytorch.utilities.consolidate_checkpoint"
# Wrappers whose names FSDP or activation checkpointing may leave in parameter names.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class NotRecoveredWarning(UserWarning):
    """The checkpoint was trained with sparse attention and has not been through the dense recovery stage."""


def read_checkpoint(path: str | Path, mmap: bool = False, finite: bool = True) -> dict:
    """The checkpoint dict at ``path`` (one file or a URL; a sharded FSDP folder is refused with the consolidation
    command). Weights holding a NaN or inf are refused (``finite``), as training refuses to resume from them: the
    one place every tool after training loads through.

    ``mmap=True`` maps the tensors instead of reading them, for a quick look at the metadata.
    """
    if is_remote(path):  # a URL: Path() would fold its '//' and look for a local folder called 'http:'
        checkpoint = load_verified(str(path), map_location="cpu", check_finite=False)
    else:
        path = Path(path)
        if path.is_dir():
            sharded = any(path.glob("*.distcp")) or (path / ".metadata").exists() or (path / "meta.pt").exists()
            kind = "a sharded (FSDP) checkpoint folder" if sharded else "a folder, not a checkpoint file"
            raise ValueError(
                f"{path} is {kind}. Consolidate it into one file first:\n"
                f"    {CONSOLIDATE} {path} --output_file {path}.consolidated\n"
                f"then pass {path}.consolidated"
            )
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        # Checksum checked where there is one; a damaged or unsafe file is refused with a message that says so.
        checkpoint = load_verified(path, map_location="cpu", mmap=mmap, check_finite=False)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{path} holds no 'state_dict' of weights: it is not a training checkpoint written by this project"
        )
    bad = non_finite_names(checkpoint["state_dict"]) if finite else []
    if bad:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf in {', '.join(bad)}): its checksum is intact, so it was "
            "saved that way (before the guards that keep NaN out of checkpoints). Use an earlier checkpoint"
        )
    return checkpoint


def training_phase(checkpoint: dict) -> dict | None:
    """The phase the checkpoint was trained in, from StageSwitch's one record: ``{"phase": index, "start": step,
    "attention": backend, "phases": [...]}`` (lighthouse.train.schedule.phase_record), or None for a checkpoint
    without one. Two-stage records of earlier versions (``{"stage": 1 | 2, "switched_at": step}``) read as phase
    0 with the model's own backend or phase 1 with dense attention."""
    state = checkpoint.get("callbacks", {}).get("StageSwitch")
    if state is None:
        return None
    if "phase" in state:
        return {k: state[k] for k in ("phase", "start", "attention", "phases")}
    if int(state["stage"]) == 2:
        return {"phase": 1, "start": state.get("switched_at") or 0, "attention": "sdpa", "phases": None}
    return {"phase": 0, "start": 0, "attention": saved_model_config(checkpoint).attention, "phases": None}


def trained_sparse(checkpoint: dict) -> bool:
    """True if the weights come from sparse (Lighthouse) training without a dense phase after it.

    A dense baseline (backend 'sdpa' everywhere) was trained dense, so it counts as recovered.
    """
    config = saved_model_config(checkpoint)
    if len(set(config.dense_layers)) >= config.n_layers:
        return False
    phase = training_phase(checkpoint)
    return (config.attention if phase is None else phase["attention"]) != "sdpa"


def warn_if_not_recovered(checkpoint: dict, path: str | Path) -> None:
    if trained_sparse(checkpoint):
        warnings.warn(
            f"{path} is a stage-1 checkpoint: the model was trained with Lighthouse (sparse) attention and has not "
            f"been recovered. Its weights are valid for dense attention, but expect worse quality than after the "
            f"dense recovery stage (configs/*recover*.yaml).",
            NotRecoveredWarning,
            stacklevel=2,
        )


def canonical_name(name: str) -> str:
    """A parameter's name without the wrapper parts FSDP, activation checkpointing or torch.compile insert."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def model_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The Transformer's parameters: LitLM's ``model.`` prefix and any wrapper names removed."""
    out = {}
    for name, tensor in checkpoint["state_dict"].items():
        name = canonical_name(name)
        if name.startswith("model."):
            out[name[len("model.") :]] = tensor
    return out


def dense_model(checkpoint: dict) -> Transformer:
    """The trained Transformer in eval mode on the CPU, every layer on dense SDPA."""
    config = saved_model_config(checkpoint)
    model = Transformer(config)
    model.set_attention_backend("sdpa")
    try:
        model.load_state_dict(model_state_dict(checkpoint), strict=True)
    except RuntimeError as err:  # missing, extra or misshapen weights: not this model's checkpoint
        first = str(err).strip().splitlines()[-1].strip()[:200]
        raise CheckpointError(f"the checkpoint's weights do not fit the model config it records ({first})") from None
    return model.eval()


def load_trained(path: str | Path, tokenizer: str | None = None) -> tuple[dict, Transformer, TextTokenizer]:
    """The checkpoint, its dense model (CPU, fp32, eval) and its tokenizer; warns if it was not recovered."""
    if tokenizer is not None:  # a mistyped --tokenizer is named before a checkpoint of GBs is read
        check_tokenizer_override(tokenizer)
    with about("--ckpt", path):
        checkpoint = read_checkpoint(path)
        model = dense_model(checkpoint)
    warn_if_not_recovered(checkpoint, path)
    tok = saved_tokenizer(checkpoint, tokenizer)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {model.config.vocab_size} "
            f"embedding rows: it is not the tokenizer this model was trained with"
        )
    return checkpoint, model, tok


def load_module_dense(load: Callable, path: str | Path, **kwargs):
    """``LitLM.load_from_checkpoint``'s work around Lightning's own loader ``load`` (handed in by LitLM, so this wing
    imports nothing of train/). ``kwargs`` are ``load``'s: hyperparameter overrides, ``arch`` among them; without
    one, the model config the checkpoint records in any version (Lightning alone would look for the hyperparameter
    ``arch``, absent before the rename)."""
    metadata = read_checkpoint(path, mmap=True)  # mmap: the tensors are not read twice
    arch = kwargs.pop("arch") if "arch" in kwargs else saved_model_config(metadata)
    # A plain dict, as LitLM saves it: Lightning writes the overrides into the checkpoint's hyperparameters before
    # LitLM.on_load_checkpoint reads the config back from them (a checkpoint older than the records has no other).
    if isinstance(arch, ModelConfig):
        arch = dataclasses.asdict(arch)
    module = load(path, weights_only=True, arch=arch, **kwargs)
    warn_if_not_recovered(metadata, path)
    module.set_attention_backend("sdpa")
    return module
