"""Tiny trained checkpoints for the export, generation and checkpoint-reading tests, each trained once a session.

Two sources: the real CLI (a Lighthouse run that switches to dense at step 2, so it leaves a stage-1 and a
stage-2 checkpoint), and LitLM under a plain Trainer for the architecture variants (GQA, tied embeddings,
a vocabulary rounded up past the tokenizer), which are faster to train that way.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from training_helpers import fit, tiny_config

from lighthouse.model.config import ModelConfig
from lighthouse.train.lit_module import LitLM

# Small but awkward: head_dim 8 and 16, 1 or 2 KV heads for 4 query heads, 320 embedding rows for 257 tokens.
ARCH_CASES = {
    "mha-untied": dict(n_heads=2, n_kv_heads=2, tie_embeddings=False),
    "gqa-untied": dict(n_heads=4, n_kv_heads=2, tie_embeddings=False),
    "gqa1-tied-vocab320": dict(n_heads=4, n_kv_heads=1, tie_embeddings=True, vocab_size=320),
}
TEXT = ("def main(argv):\n    return sum(len(a) for a in argv)  # the café's naïve résumé\n" * 30).encode()

_trained: dict[str, object] = {}


def _once(key: str, build):
    if key not in _trained:
        _trained[key] = build()
    return _trained[key]


def arch_checkpoint(tmp_path_factory, case: str) -> Path:
    """A checkpoint of the ``case`` architecture after 6 AdamW steps on byte-level text (no datamodule, so the
    checkpoint carries no tokenizer: pass tokenizer='byte')."""

    def build() -> Path:
        torch.manual_seed(0)
        config = ModelConfig(
            **{
                "vocab_size": 257,
                "dim": 32,
                "n_layers": 2,
                "ffn_hidden": 64,
                "seq_len": 64,
                "rope_theta": 1000.0,
                **ARCH_CASES[case],
            }
        )
        module = LitLM(config, warmup_steps=1)
        windows = torch.tensor(list(TEXT))[: 12 * 65].view(12, 65)
        loader = torch.utils.data.DataLoader([{"tokens": w} for w in windows], batch_size=2)
        trainer = L.Trainer(
            max_steps=6,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        trainer.fit(module, loader)
        path = tmp_path_factory.mktemp(f"arch-{case}") / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        return path

    return _once(f"arch-{case}", build)


def two_stage_checkpoints(tmp_path_factory) -> dict[int, Path]:
    """{1: stage-1 checkpoint (Lighthouse, step 2), 2: stage-2 checkpoint (dense recovery, step 4)} of one CLI run
    that switches at step 2 (one job: its hyperparameters still name the Lighthouse backend)."""

    def build() -> dict[int, Path]:
        tmp = tmp_path_factory.mktemp("two-stage")
        config = tiny_config(tmp, "stages", max_steps=4, every_n=2, switch_step=2)
        config["trainer"]["limit_val_batches"] = 0
        fit(tmp, config)
        folder = tmp / "logs" / "stages" / "checkpoints"
        return {1: folder / "step000002.ckpt", 2: folder / "step000004.ckpt"}

    return _once("two-stage", build)
