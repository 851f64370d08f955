"""Checkpoints written by earlier versions of the project keep resuming with the same results."""

import dataclasses

import pytest
from training_helpers import REPO, fit, logged_scalars, tiny_config

from lighthouse.checkpoint.io import CheckpointError
from lighthouse.checkpoint.read import saved_model_config
from lighthouse.model.config import ModelConfig
from lighthouse.train.lit_module import LitLM

# tests/fixtures/tiny_e81b2e8_step4.ckpt: tiny_config(tmp, "old", max_steps=4, every_n=4) trained at commit e81b2e8
# (before the config rename to model.arch.* and the structure pass). An uninterrupted 8-step run of that commit
# logged these train/loss values of optimizer steps 5..8 (at 4..7 then: lighthouse.train.logger's step convention came
# later); resuming its step-4 checkpoint must reproduce them.
OLD_LOSSES_5_TO_8 = {5: 5.204885482788086, 6: 5.1306304931640625, 7: 5.0603156089782715, 8: 4.979300498962402}


def test_checkpoint_from_before_the_structure_pass_resumes(tmp_path):
    config = tiny_config(tmp_path, "old", max_steps=8, every_n=4)
    cli = fit(tmp_path, config, ckpt_path=str(REPO / "tests" / "fixtures" / "tiny_e81b2e8_step4.ckpt"))
    assert cli.trainer.global_step == 8
    losses = logged_scalars(tmp_path / "logs" / "old", "train/loss")
    assert sorted(losses) == [5, 6, 7, 8]
    for step, expected in OLD_LOSSES_5_TO_8.items():
        assert losses[step] == pytest.approx(expected, rel=1e-6), step


def test_model_config_from_before_the_seq_len_rename_loads():
    """A checkpoint stores the model config with the field names of its time: the training context length was
    max_seq_len until it took data.seq_len's name."""
    saved = dataclasses.asdict(ModelConfig(dim=32, n_layers=2, n_heads=2, ffn_hidden=64, seq_len=512))
    saved["max_seq_len"] = saved.pop("seq_len")
    for checkpoint in (
        {"lighthouse_model": saved},
        {"hyper_parameters": {"arch": saved}},
        {"hyper_parameters": {"model": saved}},
    ):
        assert saved_model_config(checkpoint).seq_len == 512
    assert LitLM(saved).config.seq_len == 512  # the hyperparameters Lightning passes back when it loads one
    with pytest.raises(CheckpointError, match="not this project's"):
        saved_model_config({"lighthouse_model": {**saved, "n_experts": 8}})
