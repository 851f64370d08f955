"""Import a Hugging Face Llama checkpoint (a ``save_pretrained`` folder) as this project's Transformer.

    model:
      init_from: path/to/llama   # config.json + model.safetensors, or shards + model.safetensors.index.json

The inverse of lighthouse.export: Llama's ``rotate_half`` pairs x_i with x_{i+D/2}, as this project's RoPE does,
so the weights are renamed back and never permuted (a folder written by transformers is already in that layout;
Meta's original consolidated.pth files are not, and transformers' conversion script is what permutes them).
Only safetensors are read: no pickle is ever unpickled, and nothing is fetched from the network.

Sizes come from the checkpoint: a ``model.arch`` size left null takes the checkpoint's, one given that disagrees
is refused naming the field. ``rope_theta`` and ``rope_scaling`` given in the config are the context extension:
they replace the checkpoint's (and export writes them back). Architectures that are not Llama's (biases, another
activation, experts, partial or unknown RoPE) are refused naming the config.json field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from lighthouse.export import llama_name
from lighthouse.model.config import PREFIX, ModelConfig, RopeScaling
from lighthouse.model.transformer import Transformer

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Buffers some old checkpoints saved; derived from the config here, as in transformers.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# config.json keys of mixture-of-experts variants (Mixtral, Qwen-MoE, DeepSeek): not a dense Llama.
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")
# Per RoPE type, the rope_scaling / rope_parameters keys this project computes; any other key is refused.
ROPE_KEYS = {
    "default": set(),
    "linear": {"factor"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
    "yarn": {
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
        "truncate",
    },
}
# config.json keys that may be left out (transformers' defaults: hidden_size / heads, the heads, untied).
OPTIONAL_KEYS = ("head_dim", "num_key_value_heads", "tie_word_embeddings")
# config.json keys that count something: integers >= 1 (transformers itself would take "64" and fail later).
COUNT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
OPTIONAL_COUNT_KEYS = ("head_dim", "num_key_value_heads")
# ModelConfig field -> config.json key, for the fields a checkpoint decides.
SIZE_KEYS = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "ffn_hidden": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "tie_embeddings": "tie_word_embeddings",
}


def read_hf_config(folder: str | Path) -> dict:
    """config.json of ``folder``, checked to describe a Llama this project computes exactly."""
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"model.init_from={str(folder)!r}: no such folder")
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from={str(folder)!r} has no config.json (a save_pretrained folder has)")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    check_llama(hf, path)
    return hf


def check_llama(hf: dict, path: Path | str) -> None:
    """Refuse, naming the config.json field, what a Llama-architecture Transformer would not compute."""

    def refuse(field: str, why: str) -> None:
        raise ValueError(f"{path}: {field}={hf.get(field)!r} {why}; only Llama-architecture models import")

    if hf.get("model_type") != "llama":
        refuse("model_type", "is not 'llama'")
    architectures = hf.get("architectures") or ["LlamaForCausalLM"]
    if architectures != ["LlamaForCausalLM"]:
        refuse("architectures", "is not ['LlamaForCausalLM']")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field, False):
            refuse(field, "adds biases, which this model does not have")
    if hf.get("hidden_act", "silu") != "silu":
        refuse("hidden_act", "is not 'silu' (SwiGLU)")
    for field in MOE_KEYS:
        if hf.get(field):
            refuse(field, "makes it a mixture of experts")
    for field in (*SIZE_KEYS.values(), "vocab_size"):
        if field in OPTIONAL_KEYS or field in hf:
            continue
        refuse(field, "is missing")
    for field in (*COUNT_KEYS, *(key for key in OPTIONAL_COUNT_KEYS if hf.get(key) is not None)):
        if not _is_count(hf[field]):
            raise ValueError(f"{path}: {field}={hf[field]!r} must be an integer >= 1")
    eps = hf["rms_norm_eps"]
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ValueError(f"{path}: rms_norm_eps={eps!r} must be a number in (0, 1)")
    if not isinstance(hf.get("tie_word_embeddings", False), bool):
        raise ValueError(f"{path}: tie_word_embeddings={hf['tie_word_embeddings']!r} must be true or false")
    rope_settings(hf, path)  # refuses unknown RoPE types and fields


def _is_count(value) -> bool:
    """An integer >= 1 (JSON's true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def rope_settings(hf: dict, path: Path | str = "config.json") -> tuple[float, RopeScaling | None]:
    """(rope_theta, scaling) of a Llama config.json: transformers 5's ``rope_parameters`` or 4's ``rope_theta`` +
    ``rope_scaling``, with transformers' defaults for what is left out."""
    field = rope_field(hf, path)
    params = dict(hf.get(field) or {})
    theta = params.pop("rope_theta", hf.get("rope_theta", 10_000.0))
    kind = params.pop("rope_type", params.pop("type", "default"))
    if kind not in ROPE_KEYS:
        raise ValueError(
            f"{path}: {field}.rope_type={kind!r} is not one this project computes ({', '.join(ROPE_KEYS)}); "
            "dynamic and longrope scalings depend on the input length"
        )
    partial = params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{path}: partial_rotary_factor={partial!r}: RoPE on part of each head is not supported")
    unknown = sorted(set(params) - ROPE_KEYS[kind])
    if unknown:
        raise ValueError(f"{path}: {field} has {unknown}, which rope_type {kind!r} does not take here")
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
        raise ValueError(f"{path}: rope_theta={theta!r} must be a number > 0")
    if kind == "default":
        return float(theta), None
    if kind in ("llama3", "yarn"):  # transformers' default: the length the checkpoint names
        params.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    if params.get("factor") is None:
        lengths = hf.get("max_position_embeddings"), params.get("original_max_position_embeddings")
        if kind != "yarn" or not all(map(_is_count, lengths)):
            # transformers refuses these too; a silent factor 1 would import the model without its scaling
            raise ValueError(
                f"{path}: {field}.factor is missing, which rope_type {kind!r} needs"
                + (" (or max_position_embeddings and original_max_position_embeddings)" if kind == "yarn" else "")
            )
        params["factor"] = lengths[0] / lengths[1]
    if kind == "yarn":
        for key, default in (("beta_fast", 32.0), ("beta_slow", 1.0)):
            params[key] = params.get(key) or default
        mscale, mscale_all = params.pop("mscale", None), params.pop("mscale_all_dim", None)
        if params.get("attention_factor") is None and mscale and mscale_all:
            params["attention_factor"] = _yarn_mscale(params["factor"], mscale) / _yarn_mscale(
                params["factor"], mscale_all
            )
    scaling = RopeScaling(rope_type=kind, **params)
    try:
        scaling.validate()
    except ValueError as err:
        raise ValueError(f"{path}: {field}: {str(err).removeprefix(PREFIX + 'rope_scaling.')}") from None
    return float(theta), scaling


def rope_field(hf: dict, path: Path | str) -> str:
    """Which config.json field holds the RoPE settings: ``rope_parameters`` (transformers 5) or ``rope_scaling``
    (4). A folder may have both (this project's export writes both); they must then agree, since transformers 5
    reads rope_scaling first and this import rope_parameters: two readings of one folder would differ."""
    for field in ("rope_parameters", "rope_scaling"):
        value = hf.get(field)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}: {field}={value!r} must be a JSON object or null")
    new, old = hf.get("rope_parameters") or {}, hf.get("rope_scaling") or {}
    if new and old and _scaling_of(new) != _scaling_of(old):
        raise ValueError(
            f"{path}: rope_parameters={new!r} and rope_scaling={old!r} disagree, and transformers versions read "
            "different ones: keep the one meant (or make them equal)"
        )
    theta = new.get("rope_theta")
    if theta is not None and hf.get("rope_theta") is not None and theta != hf["rope_theta"]:
        raise ValueError(
            f"{path}: rope_parameters.rope_theta={theta!r} and rope_theta={hf['rope_theta']!r} disagree: keep one"
        )
    return "rope_parameters" if new else "rope_scaling"


def _scaling_of(params: dict) -> dict:
    """A RoPE settings dict without its base, with the type under one name (transformers 4 wrote 'type')."""
    scaling = {key: value for key, value in params.items() if key not in ("rope_theta", "type")}
    scaling["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return scaling


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def checkpoint_fields(hf: dict) -> dict:
    """The ModelConfig fields a Llama config.json decides (vocab_size is the embedding's rows)."""
    fields = {name: hf[key] for name, key in SIZE_KEYS.items() if key in hf and hf[key] is not None}
    fields.setdefault("head_dim", hf["hidden_size"] // hf["num_attention_heads"])
    fields.setdefault("n_kv_heads", hf["num_attention_heads"])
    fields.setdefault("tie_embeddings", False)  # transformers' LlamaConfig default
    fields["norm_eps"] = float(fields["norm_eps"])
    fields["rope_theta"], fields["rope_scaling"] = rope_settings(hf)
    fields["vocab_size"] = hf["vocab_size"]
    return fields


def imported_config(config: ModelConfig, hf: dict, folder: str | Path = "model.init_from") -> ModelConfig:
    """``config`` with the checkpoint's sizes; a given size that disagrees is refused, naming the field. A given
    rope_theta / rope_scaling is kept (the context extension), a null one takes the checkpoint's."""
    theirs = checkpoint_fields(hf)
    changes = {}
    for name, key in SIZE_KEYS.items():
        value = theirs[name]
        if name not in config.left_null and getattr(config, name) != value:
            raise ValueError(
                f"{PREFIX}{name}={getattr(config, name)!r} contradicts the checkpoint {folder} ({key}={value!r}): "
                f"leave {PREFIX}{name} null to take the checkpoint's"
            )
        changes[name] = value
    for name in ("rope_theta", "rope_scaling"):
        if name in config.left_null:
            changes[name] = theirs[name]
    # The tokenizer's size arrives through data.vocab_size; the embedding may have spare rows, never too few.
    rows = theirs["vocab_size"]
    if config.vocab_size > rows:
        raise ValueError(
            f"{PREFIX}vocab_size={config.vocab_size} (from data.tokenizer) exceeds the checkpoint {folder}'s "
            f"embedding rows (vocab_size={rows}): use its tokenizer (data.tokenizer: hf:{folder})"
        )
    changes["vocab_size"] = rows
    return dataclasses.replace(config, **changes)


def read_safetensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a save_pretrained folder: the files its index names, else its *.safetensors files. A folder
    with both an index and a model.safetensors the index does not name alone is refused as ambiguous."""
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a safetensors index (a JSON with 'weight_map'): {err!r}") from None
        files = sorted({folder / name for name in weight_map.values()})
        if (folder / SINGLE).is_file() and files != [folder / SINGLE]:
            # transformers loads model.safetensors and ignores the index; reading the shards would disagree with it,
            # and either choice may be the stale one (an export into a folder that held a sharded model).
            raise ValueError(
                f"model.init_from={str(folder)!r} holds both {SINGLE} and {INDEX} (which names other files), so which "
                f"weights are meant is ambiguous: move away the stale one, {SINGLE} or the index and its shards"
            )
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = f" (it has {pickles}: pickles are never loaded; re-save with save_pretrained)" if pickles else ""
        raise FileNotFoundError(f"model.init_from={str(folder)!r} has no .safetensors weights{hint}")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            missing = f"{index} names {path.name}, which is missing" if index.is_file() else f"{path} is not a file"
            raise FileNotFoundError(missing)
        try:
            with safe_open(str(path), framework="pt") as f:
                these = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
        twice = sorted(set(these) & set(tensors))
        if twice:
            raise ValueError(f"tensors {twice[:5]} are in more than one file of {folder}")
        tensors.update(these)
    return tensors


def project_state_dict(weights: dict[str, torch.Tensor], model: Transformer, folder: str | Path) -> dict:
    """The checkpoint's tensors under this model's parameter names, in fp32; missing, unexpected or misshapen
    tensors are refused by name."""
    ours = model.state_dict()
    wanted = {llama_name(name): name for name in ours}
    tied = model.config.tie_embeddings
    if tied:
        # Llama re-ties the output projection on load; a saved lm_head.weight, if any, is not read.
        wanted.pop("lm_head.weight")
    present = {name for name in weights if not name.endswith(IGNORED_SUFFIXES)}
    if tied:
        present.discard("lm_head.weight")
    missing, unexpected = sorted(set(wanted) - present), sorted(present - set(wanted))
    if unexpected:
        raise ValueError(
            f"the checkpoint {folder} has tensors a Llama of its config.json does not: {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    if missing:
        raise ValueError(f"the checkpoint {folder} lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    out = {}
    for hf_name, name in wanted.items():
        tensor = weights[hf_name]
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise ValueError(
                f"the checkpoint {folder}'s {hf_name} has shape {tuple(tensor.shape)}, its config.json says "
                f"{tuple(ours[name].shape)}"
            )
        out[name] = tensor.to(torch.float32)
    if tied:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def import_llama(folder: str | Path, config: ModelConfig) -> Transformer:
    """A Transformer with ``folder``'s weights and sizes, and ``config``'s training settings (backends, context
    length, Lighthouse, chunking) and context extension (rope_theta, rope_scaling)."""
    config = imported_config(config, read_hf_config(folder), folder)
    weights = read_safetensors(folder)
    model = Transformer(config)
    model.load_state_dict(project_state_dict(weights, model, folder))
    return model


def transformer_from(config: ModelConfig, init_from: str | Path | None) -> Transformer:
    """The model a run starts from: random weights, or ``init_from``'s (a Hugging Face Llama folder)."""
    return Transformer(config) if init_from is None else import_llama(init_from, config)
