"""Checkpoints in Python after training: LitLM.load_from_checkpoint on every kind the project writes, the tokenizer
found for old checkpoints, and a CLI that lists only the subcommands that work."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from trained_models import two_stage_checkpoints
from training_helpers import REPO, tiny_config

from lighthouse.checkpoint.read import NotRecoveredWarning, load_trained, read_checkpoint
from lighthouse.checkpoint.records import TOKENIZER_KEY, saved_model_config, saved_tokenizer
from lighthouse.data.tokenizer import byte_tokenizer, train_bpe
from lighthouse.export import export_llama
from lighthouse.model.config import ModelConfig
from lighthouse.train.cli import main
from lighthouse.train.lit_module import LitLM

RUN_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def assert_same_weights(module: LitLM, checkpoint: dict) -> None:
    state = module.state_dict()
    assert state.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in checkpoint["state_dict"].items())


@pytest.mark.parametrize("stage", [1, 2])
def test_load_from_checkpoint_on_both_stages(tmp_path_factory, stage):
    path = two_stage_checkpoints(tmp_path_factory)[stage]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = LitLM.load_from_checkpoint(path)
    assert_same_weights(module, read_checkpoint(path))
    # One job: both checkpoints name the Lighthouse backend; only the phase record tells that stage 2 is dense.
    assert module.config.attention == "lighthouse_naive"
    # Loaded for inference: dense in every layer either way; the stage-1 weights are flagged as not recovered.
    assert module.model.attention_backends == ["sdpa"] * 3
    assert any(issubclass(w.category, NotRecoveredWarning) for w in caught) == (stage == 1)
    tokens = torch.randint(0, 257, (1, 513), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = module.token_losses(tokens).mean()
    assert math.isfinite(loss.item())


def test_checkpoint_from_before_the_arch_rename_loads(tmp_path_factory, tmp_path):
    """Old checkpoints: hyperparameters under 'model', no 'lighthouse_model', no tokenizer JSON."""
    checkpoint = read_checkpoint(two_stage_checkpoints(tmp_path_factory)[2])
    hparams = checkpoint["hyper_parameters"]
    hparams["model"] = hparams.pop("arch")
    del checkpoint["lighthouse_model"], checkpoint[TOKENIZER_KEY]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    module = LitLM.load_from_checkpoint(old)
    assert module.config == ModelConfig(**hparams["model"])
    assert_same_weights(module, checkpoint)
    # The byte tokenizer is recognised by the fingerprint the data module stored.
    assert saved_tokenizer(checkpoint).fingerprint == byte_tokenizer().fingerprint


def test_checkpoint_written_at_e81b2e8_loads_and_exports(tmp_path):
    """The issue's failing case, on a real old checkpoint: hyperparameters 'model' with unresolved head sizes."""
    old = REPO / "tests" / "fixtures" / "tiny_e81b2e8_step4.ckpt"
    checkpoint = read_checkpoint(old)
    assert "arch" not in checkpoint["hyper_parameters"] and TOKENIZER_KEY not in checkpoint
    module = LitLM.load_from_checkpoint(old)
    assert (module.config.n_kv_heads, module.config.head_dim) == (2, 16)
    assert module.config.attention == "lighthouse_naive"  # stage 1, loaded dense for inference (with a warning)
    assert module.model.attention_backends == ["sdpa"] * 3
    assert_same_weights(module, checkpoint)
    with pytest.warns(NotRecoveredWarning):
        folder = export_llama(old, tmp_path / "hf")  # byte tokenizer recognised by its stored fingerprint
    assert json.loads((folder / "lighthouse.json").read_text())["tokenizer_fingerprint"] == "604310a2abe28614"


def test_arch_given_to_load_from_checkpoint_is_checked_and_used(tmp_path_factory):
    """An ``arch`` override, as a ModelConfig: refused where it changes parameter shapes, used where it fits; on a
    checkpoint from before the records too (its hyperparameter 'model' is then the only config it has)."""
    path = two_stage_checkpoints(tmp_path_factory)[2]
    saved = saved_model_config(read_checkpoint(path))
    with pytest.raises(ValueError, match=r"shapes differ\): model.arch.n_layers: checkpoint 3 vs config 2"):
        LitLM.load_from_checkpoint(path, arch=dataclasses.replace(saved, n_layers=2))
    old = REPO / "tests" / "fixtures" / "tiny_e81b2e8_step4.ckpt"
    wanted = dataclasses.replace(saved_model_config(read_checkpoint(old)), rope_theta=5000.0)
    module = LitLM.load_from_checkpoint(old, arch=wanted)
    assert module.config == wanted and module.model.attention_backends == ["sdpa"] * wanted.n_layers


@pytest.mark.parametrize("config_file", RUN_CONFIGS)
def test_load_from_checkpoint_on_every_shipped_config(tmp_path, config_file):
    """The model section of each run config as written, shrunk to a few thousand parameters: backends
    (Triton included, never run here), activation checkpointing, compile and 65536 contexts all load."""
    config = yaml.safe_load((REPO / "configs" / config_file).read_text())
    model_args = dict(config["model"])
    arch = {
        **model_args.pop("arch"),
        "dim": 32,
        "n_heads": 2,
        "n_kv_heads": None,
        "head_dim": None,
        "ffn_hidden": 64,
        "n_layers": 4,
        "seq_len": config["data"]["seq_len"],
    }
    arch["dense_layers"] = [i for i in (0, 3) if arch.get("dense_layers")]
    model_args.pop("optimizer", None)
    model_args.pop("init_from", None)  # the extend configs' placeholder folder: the import has its own tests
    module = LitLM(ModelConfig(**arch), **model_args)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    module.trainer = trainer
    trainer.save_checkpoint(tmp_path / "x.ckpt", weights_only=True)
    loaded = LitLM.load_from_checkpoint(tmp_path / "x.ckpt")
    assert loaded.config == module.config
    assert loaded.model.attention_backends == ["sdpa"] * len(module.model.attention_backends)  # for inference
    assert_same_weights(loaded, read_checkpoint(tmp_path / "x.ckpt"))


def test_sharded_folder_is_refused_by_load_from_checkpoint(tmp_path):
    (tmp_path / "last.ckpt").mkdir()
    (tmp_path / "last.ckpt" / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(ValueError, match="consolidate_checkpoint"):
        LitLM.load_from_checkpoint(tmp_path / "last.ckpt")


def test_tokenizer_of_an_old_bpe_checkpoint_is_found_by_fingerprint(tmp_path):
    tok = train_bpe(["def main(argv): return argv\n" * 50], vocab_size=280)
    (tmp_path / "tokenizers").mkdir()
    byte_tokenizer().save(tmp_path / "tokenizers" / "decoy.json")
    tok.save(tmp_path / "tokenizers" / "bpe280-corpus-abc.json")
    checkpoint = {
        "LMDataModule": {"tokenizer_fingerprint": tok.fingerprint},
        "datamodule_hyper_parameters": {"tokenizer": "bpe:280", "data_dir": str(tmp_path)},
    }
    assert saved_tokenizer(checkpoint).fingerprint == tok.fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        saved_tokenizer(checkpoint, override="byte")  # the wrong tokenizer is refused
    checkpoint["datamodule_hyper_parameters"]["data_dir"] = str(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="--tokenizer"):
        saved_tokenizer(checkpoint)


@pytest.mark.parametrize("make,problem", [(lambda p: None, "no such file"), (Path.mkdir, "not a file")])
def test_a_tokenizer_override_that_is_no_file_says_so(tmp_path, make, problem):
    # generate.py --tokenizer /tmp/nope.json said only what a valid value looks like, not that the file is missing.
    path = tmp_path / "tok.json"
    make(path)
    with pytest.raises(ValueError, match="^" + re.escape(f"--tokenizer='{path}': {problem} (valid: 'byte' or ")):
        saved_tokenizer({}, override=str(path))


def test_a_missing_tokenizer_is_named_before_the_checkpoint_is_read(tmp_path):
    """load_trained (export.py, generate.py) checks --tokenizer first: a checkpoint of GBs was read before."""
    nope = tmp_path / "nope.json"
    with pytest.raises(ValueError, match="^" + re.escape(f"--tokenizer='{nope}': no such file")):
        load_trained(tmp_path / "absent.ckpt", str(nope))


def test_train_help_lists_only_working_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert "{fit,validate}" in usage
    assert "test" not in usage.split("subcommands:")[1] and "predict" not in usage


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_help_describes_ckpt_path_and_weights_only_as_this_project_reads_them(capsys, subcommand):
    # Lightning's docstrings said `last` and `best` mean checkpoints of an earlier trainer.fit in the same process,
    # and weights_only "Defaults to None"; here a launch resolves runs and names, refuses best, loads weights only.
    with pytest.raises(SystemExit) as exit_:
        main([subcommand, "--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    ckpt_path = help_text.split("--ckpt_path CKPT_PATH ", 1)[1].split(" --", 1)[0]
    for wording in ("a run folder (logs/<name>/<start time>)", "a run name (logs/<name>)", "best is refused"):
        assert wording in ckpt_path, ckpt_path
    assert "previous ``trainer.fit`` call" not in help_text
    weights_only = help_text.split("--weights_only {true,false,null} ", 1)[1]
    assert weights_only.startswith("Checkpoints load with torch.load(weights_only=True) when this is true or null")
    assert "Defaults to ``None``" not in help_text


def test_validate_subcommand_runs_on_a_checkpoint(tmp_path_factory, tmp_path):
    ckpt = two_stage_checkpoints(tmp_path_factory)[2]
    config = tiny_config(tmp_path, "validate", attention="sdpa")
    path = tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = main(["validate", "--config", str(path), "--ckpt_path", str(ckpt)])
    assert math.isfinite(float(cli.trainer.callback_metrics["val/loss"]))
