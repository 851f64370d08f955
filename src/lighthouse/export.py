"""Export a training checkpoint as a Hugging Face ``LlamaForCausalLM`` folder (config, safetensors, tokenizer).

    python src/export.py --ckpt logs/demo --out exported/demo

``--ckpt`` takes a checkpoint file, a run folder or a run name (the newest checkpoint that verifies of the run
``--ckpt_path last`` would continue; see lighthouse.train.run_dir.find_checkpoint).

The architecture is Llama's exactly: pre-norm blocks with RMSNorm (normalised in fp32, cast back, then scaled),
SwiGLU, GQA and RoPE on the halves of each head (x_i with x_{i+D/2}, Llama's ``rotate_half``), so the weights
are only renamed, never permuted; tests/test_export.py pins equal logits. Needs ``safetensors`` only;
``transformers`` is what reads the folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from lighthouse.checkpoint.io import fsync_path
from lighthouse.checkpoint.read import load_trained, trained_sparse, training_phase
from lighthouse.data.tokenizer import TextTokenizer
from lighthouse.generate import Sampling
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer
from lighthouse.tool_args import entry_point, local_path, output_folder, require, summary

WEIGHTS = "model.safetensors"
PROVENANCE = "lighthouse.json"  # what every export writes beside the weights: where they came from
STAGING_PREFIX = ".export-staging-"

# This project's parameter names -> Llama's, per block and outside the blocks.
BLOCK_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w_gate.weight": "mlp.gate_proj.weight",
    "feed_forward.w_up.weight": "mlp.up_proj.weight",
    "feed_forward.w_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def llama_name(name: str) -> str:
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    _, index, rest = name.split(".", 2)  # "layers.<i>.<rest>"
    return f"model.layers.{index}.{BLOCK_NAMES[rest]}"


def llama_state_dict(model: Transformer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Llama-named copies of the weights; a tied output projection is left out (Llama re-ties it on load)."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "output.weight" and model.config.tie_embeddings:
            continue
        out[llama_name(name)] = tensor.detach().to(dtype).contiguous()
    return out


def llama_config(config: ModelConfig, tokenizer: TextTokenizer, dtype: torch.dtype) -> dict:
    """config.json of a LlamaConfig with this model's sizes (read by transformers 4.4x and 5.x alike)."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,  # embedding rows; may exceed the tokenizer's size (vocab_multiple_of)
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers 4.x
        "rope_scaling": rope_scaling(config),  # transformers 4.x (5.x reads it too, before rope_parameters)
        "rope_parameters": {**(rope_scaling(config) or {"rope_type": "default"}), "rope_theta": config.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
        # Training saw every document right after an EOS (and its BOS, if the tokenizer has one).
        "bos_token_id": bos_id(tokenizer),
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.eos_id,
        "torch_dtype": dtype_name,  # transformers 4.x
        "dtype": dtype_name,  # transformers 5.x
        "use_cache": True,
    }


def rope_scaling(config: ModelConfig) -> dict | None:
    """Hugging Face's rope_scaling dict of the model's scaling (lighthouse.model.config.RopeScaling uses its names)."""
    scaling = config.rope_scaling
    if scaling is None or scaling.rope_type == "default":
        return None
    keys = {
        "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
        "yarn": (
            "factor",
            "original_max_position_embeddings",
            "beta_fast",
            "beta_slow",
            "attention_factor",
            "truncate",
        ),
    }[scaling.rope_type]
    out = {"rope_type": scaling.rope_type, **{key: getattr(scaling, key) for key in keys}}
    if out.get("attention_factor", 0) is None:
        del out["attention_factor"]  # transformers derives it from factor, as this project does
    return out


def bos_id(tokenizer: TextTokenizer) -> int:
    return tokenizer.eos_id if tokenizer.bos_id is None else tokenizer.bos_id


def generation_config(tokenizer: TextTokenizer, sampling: Sampling) -> dict:
    return {
        "bos_token_id": bos_id(tokenizer),
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.eos_id,
        "do_sample": sampling.temperature > 0,
        "temperature": sampling.temperature if sampling.temperature > 0 else 1.0,
        "top_k": sampling.top_k or 0,  # 0 turns transformers' default top_k=50 off
        "top_p": sampling.top_p,
    }


def tokenizer_files(tokenizer: TextTokenizer, max_len: int) -> dict[str, dict | str]:
    """tokenizer.json and the small files that make AutoTokenizer load it as a PreTrainedTokenizerFast."""
    eos = tokenizer.eos_token
    bos = eos if tokenizer.bos_token is None else tokenizer.bos_token
    return {
        # A BOS is in tokenizer.json's post-processor already: AutoTokenizer adds it as training did.
        "tokenizer.json": tokenizer.to_str(),
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": eos,
            "bos_token": bos,
            "pad_token": eos,
            "add_bos_token": False,
            "add_eos_token": False,
            "model_max_length": max_len,
            "clean_up_tokenization_spaces": False,
            # As in training: "<|eos|>" written inside a text is text, only the id itself ends a document.
            "split_special_tokens": True,
        },
        "special_tokens_map.json": {"eos_token": eos, "bos_token": bos, "pad_token": eos},
    }


def check_out(out: str | Path) -> None:
    """Refuse an ``--out`` the export should not write into, before any checkpoint is read: an empty value (an unset
    shell variable; as a path it is the current folder), or a folder holding weights that the export would not
    overwrite. Those would sit beside the new model.safetensors, and readers choose among them differently
    (transformers takes model.safetensors, model.init_from the shards an index names), so the folder is refused
    rather than cleaned: the files may be the only copy of a model."""
    value = str(out)
    folder = output_folder("--out", value, create=False)  # refuses a blank value too
    require(
        not (folder / WEIGHTS).exists() or (folder / PROVENANCE).is_file(),
        "--out",
        value,
        f"it holds a {WEIGHTS} that no export wrote (no {PROVENANCE} beside it), such as the Hugging Face model a "
        "run was imported from: the export would overwrite what may be its only copy. Export into another folder",
    )
    names = [p.name for p in folder.iterdir() if is_other_weights(p.name)] if folder.is_dir() else []
    stale = sorted(names, key=lambda name: (not name.endswith(".index.json"), name))  # an index says most
    shown = ", ".join(stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    require(
        not stale,
        "--out",
        value,
        f"it holds weights this export would not overwrite ({shown}), which a reader could load instead of or "
        "with the new model.safetensors: move them away, or export into another folder",
    )


def is_other_weights(name: str) -> bool:
    """A weight file of a Hugging Face folder (safetensors, shard index, pickle) other than the one export writes."""
    if name == WEIGHTS:
        return False
    return name.endswith((".safetensors", ".index.json")) or (
        name.startswith("pytorch_model") and name.endswith(".bin")
    )


def export_llama(
    ckpt: str | Path, out: str | Path, dtype: torch.dtype = torch.float32, tokenizer: str | None = None
) -> Path:
    """Write the Llama folder for checkpoint ``ckpt`` into ``out`` (created; the files an export writes are
    overwritten, so exporting into the same folder again replaces the model; other weights there are refused)."""
    local_path("--ckpt", str(ckpt))
    check_out(out)  # before the load: a wrong --out costs no time
    checkpoint, model, tok = load_trained(ckpt, tokenizer)
    existed = Path(out).is_dir()
    out = output_folder("--out", str(out))
    files = {
        "config.json": llama_config(model.config, tok, dtype),
        "generation_config.json": generation_config(tok, Sampling()),
        **tokenizer_files(tok, model.config.seq_len),
        # Where the weights came from, for whoever finds the folder later.
        PROVENANCE: {
            "checkpoint": str(ckpt) if "://" in str(ckpt) else str(Path(ckpt).resolve()),
            "global_step": checkpoint.get("global_step"),
            "phase": training_phase(checkpoint),
            "recovered": not trained_sparse(checkpoint),
            "tokenizer_fingerprint": tok.fingerprint,
            "model_config": dataclasses.asdict(model.config),
        },
    }
    try:
        write_all_or_nothing(out, llama_state_dict(model, dtype), files)
    except OSError as err:
        if not existed and not any(out.iterdir()):
            out.rmdir()  # made for this export: a failed one leaves no empty folder behind
        raise OSError(f"--out={str(out)!r}: the export could not be written ({err}); the folder is as it was") from None
    return out


def write_all_or_nothing(out: Path, weights: dict[str, torch.Tensor], files: dict[str, str | dict]) -> None:
    """Write the weights and ``files`` into ``out``, all or nothing: everything is written and flushed to disk in
    a staging folder inside ``out`` (so on its filesystem) and only then renamed over the old files, so a full
    disk or an I/O error leaves ``out`` as it was (was: new weights under the previous export's config). A kill
    mid-write leaves the staging folder, which the next export into ``out`` removes."""
    for stale in out.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        for name, content in files.items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
            (staging / name).write_text(text, encoding="utf-8")
            fsync_path(staging / name)
        try:
            save_file(weights, str(staging / WEIGHTS), metadata={"format": "pt"})
        except SafetensorError as err:  # a full disk included; not an OSError
            raise OSError(f"{WEIGHTS}: {err}") from None
        # safetensors writes through a private temporary file (mode 0600): give the weights the mode the JSON
        # files got from the umask, so whoever may read the config may read the model.
        os.chmod(staging / WEIGHTS, (staging / "config.json").stat().st_mode & 0o777)
        fsync_path(staging / WEIGHTS)
        for name in (WEIGHTS, *files):  # renames within one filesystem: no space needed, nothing half-written
            os.replace(staging / name, out / name)
        fsync_path(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=summary(__doc__))
    p.add_argument(
        "--ckpt",
        required=True,
        help="a .ckpt written by src/train.py (a sharded folder is refused), or a run folder (logs/demo/<start time>) "
        "or run name (logs/demo), optionally followed by /last: its newest checkpoint that verifies",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype of the saved weights")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="'byte' or a tokenizer .json, for checkpoints that do not carry their tokenizer",
    )
    args = p.parse_args(argv)
    check_out(args.out)  # before find_checkpoint, which may verify several checkpoints
    from lighthouse.train.run_dir import find_checkpoint  # the run layout; only the command needs it

    ckpt = find_checkpoint(args.ckpt)
    if str(ckpt) != args.ckpt:
        print(f"--ckpt {args.ckpt}: exporting {ckpt}")
    out = export_llama(ckpt, args.out, DTYPES[args.dtype], args.tokenizer)
    print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}))")


if __name__ == "__main__":
    entry_point(main)
