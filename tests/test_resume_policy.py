"""Resuming: a change to what the trained weights compute is refused unless overridden, recipe changes are allowed,
optimizer and LR-schedule changes are applied and announced (before, a new LR on resume had no effect)."""

import dataclasses
import re

import pytest
import torch
from training_helpers import fit, logged_scalars, tiny_config

from lighthouse.checkpoint import io
from lighthouse.checkpoint.files import read_metadata
from lighthouse.checkpoint.records import MODEL_KEY
from lighthouse.checkpoint.resume import COMPUTE, RECIPE, SHAPE, refuse_tokenizer_change
from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.tokenizer import byte_tokenizer, parse_tokenizer_spec
from lighthouse.model.config import ModelConfig
from lighthouse.train.lit_module import lr_multiplier

TINY_LR, WARMUP, SCHEDULE_STEPS = 2e-3, 2, 20  # what tiny_config trains with (demo.yaml's optimizer)


def test_every_model_field_has_exactly_one_resume_rule():
    assert sorted(SHAPE + COMPUTE + RECIPE) == sorted(f.name for f in dataclasses.fields(ModelConfig))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A 2-step run to resume from; every resume below uses its folder (same corpus, same data cache)."""
    folder = tmp_path_factory.mktemp("resume")
    fit(folder, tiny_config(folder, "base", max_steps=2, every_n=2))
    return folder, folder / "logs" / "base" / "checkpoints" / "last.ckpt"


def resume(base, name: str, edit=None, extra=()):
    folder, ckpt = base
    config = tiny_config(folder, name, max_steps=3, every_n=2)
    if edit is not None:
        edit(config)
    fit(folder, config, ckpt_path=str(ckpt), tag=name, extra=list(extra))
    return logged_scalars(folder / "logs" / name, "train/lr")


def trained(base, name: str) -> bool:
    return bool(logged_scalars(base[0] / "logs" / name, "train/loss"))


def arch(**fields):
    return lambda config: config["model"]["arch"].update(fields)


@pytest.mark.parametrize("field, value", [("norm_eps", 0.5), ("rope_theta", 100.0)])
def test_change_to_what_the_weights_compute_is_refused(base, field, value):
    pattern = (
        rf"would change what the trained weights compute: model.arch.{field}: checkpoint .* vs config "
        rf"{value}.*--resume_overrides \[{field}\]"
    )
    with pytest.raises(ValueError, match=pattern):
        resume(base, f"refused-{field}", edit=arch(**{field: value}))
    assert not trained(base, f"refused-{field}")


def test_override_accepts_the_named_change(base):
    with pytest.warns(UserWarning, match=r"model.arch.norm_eps 1e-05 -> 0.5, accepted by --resume_overrides"):
        resume(base, "override", edit=arch(norm_eps=0.5), extra=["--resume_overrides", "norm_eps"])
    assert trained(base, "override")


def test_changed_lr_and_schedule_are_applied_and_announced(base):
    def edit(config):
        config["model"]["warmup_steps"] = 10

    with pytest.warns(UserWarning, match=r"model.optimizer.init_args.lr 0.002 -> 0.0001; model.warmup_steps 2 -> 10"):
        lrs = resume(base, "new-lr", edit=edit, extra=["--model.optimizer.init_args.lr", "1e-4"])
    # The LR of step 3 (the schedule's position 2) follows the new base LR and warm-up (before: the checkpoint's
    # 2e-3 schedule, unchanged).
    assert lrs[3] == pytest.approx(1e-4 * lr_multiplier(2, 10, SCHEDULE_STEPS, "cosine", 0.1), rel=1e-6)
    assert lrs[3] != pytest.approx(TINY_LR * lr_multiplier(2, WARMUP, SCHEDULE_STEPS, "cosine", 0.1), rel=1e-3)


def test_other_optimizer_class_is_refused(base):
    def edit(config):
        config["model"]["optimizer"] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}}

    with pytest.raises(ValueError, match="a different optimizer class cannot continue its state"):
        resume(base, "sgd", edit=edit)
    assert not trained(base, "sgd")


def test_recipe_changes_are_allowed(base, recwarn):
    lrs = resume(
        base,
        "recipe",
        edit=arch(
            attention="sdpa",
            dense_layers=[0, 1],
            activation_checkpointing=True,
            lighthouse={"levels": 2, "pooling_factor": 2, "topk": 128},
        ),
    )
    assert sorted(lrs) == [3]  # trained on from the checkpoint's step 2 (max_steps 3)
    assert not [w for w in recwarn if "resume:" in str(w.message)]


def bpe_files(base) -> list:
    return sorted((base[0] / "data" / "tokenizers").glob("*.json"))


def test_changed_tokenizer_is_refused_before_any_data_work(base):
    # Before, a BPE was trained and the corpus tokenized, and then the restore failed on model.arch.vocab_size.
    def edit(config):
        config["data"]["tokenizer"] = "bpe:300"

    refusal = f"data.tokenizer='bpe:300', but the checkpoint {base[1]} was trained with tokenizer 'byte': "
    with pytest.raises(ValueError, match="^" + re.escape(refusal) + ".*Pass --data.tokenizer byte"):
        resume(base, "bpe", edit=edit)
    assert not trained(base, "bpe") and not bpe_files(base)


@pytest.mark.parametrize(("field", "value"), [("seq_len", 1024), ("seed", 7)])
def test_a_fit_on_another_data_seed_or_window_length_is_refused_before_the_data_is_read(
    base, monkeypatch, field, value
):
    # Before, the corpus was tokenized (or its cache read) and the model built, and then the data module refused.
    read = []
    monkeypatch.setattr(LMDataModule, "prepare_data", lambda self: read.append(self))
    saved = torch.load(base[1], weights_only=True)["LMDataModule"][field]

    def edit(config):
        config["data"][field] = value

    refusal = (
        f"resuming {base[1]} on a different data stream: data.{field}={value}, the checkpoint's {saved}. Keep the "
        "checkpoint's values, or pass --data.strict_resume false"
    )
    with pytest.raises(ValueError, match="^" + re.escape(refusal)):
        resume(base, f"stream-{field}", edit=edit)
    assert not read and not trained(base, f"stream-{field}")


def test_strict_resume_false_lets_another_data_seed_through_as_the_data_module_does(base):
    def edit(config):
        config["data"].update(seed=7, strict_resume=False)

    resume(base, "stream-not-strict", edit=edit)
    assert trained(base, "stream-not-strict")


def test_a_file_that_is_no_lightning_checkpoint_is_refused_naming_it(base):
    # Before, Lightning's restore ended in KeyError: 'pytorch-lightning_version', as a traceback.
    foreign = base[0] / "state_dict.ckpt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    folder = base[0]
    with pytest.raises(ValueError, match=f"^--ckpt_path {re.escape(str(foreign))} is not a Lightning checkpoint"):
        fit(folder, tiny_config(folder, "foreign", max_steps=3, every_n=2), ckpt_path=str(foreign), tag="foreign")
    assert not trained(base, "foreign")


def test_changed_tokenizer_is_refused_for_ckpt_path_last(base):
    folder, ckpt = base
    config = tiny_config(folder, "base", max_steps=3, every_n=2)  # the run of that name: `last` is its last.ckpt
    config["data"]["tokenizer"] = "bpe:300"
    with pytest.raises(ValueError, match=re.escape(f"the checkpoint {ckpt} was trained with tokenizer 'byte'")):
        fit(folder, config, ckpt_path="last", tag="bpe-last")
    assert not bpe_files(base)


def test_a_tokenizer_file_with_the_checkpoints_fingerprint_is_accepted(base, monkeypatch):
    same_as_bytes = base[0] / "bytes.json"
    same_as_bytes.write_text(byte_tokenizer().to_str())
    loads = []  # what fit passed on: --ckpt_path and --weights_only still reach trainer.fit
    load = io.load_verified

    def recorded_load(path, map_location=None, weights_only=None, **kwargs):
        loads.append((str(path), weights_only))
        return load(path, map_location, weights_only, **kwargs)

    monkeypatch.setattr(io, "load_verified", recorded_load)

    def edit(config):
        config["data"]["tokenizer"] = str(same_as_bytes)

    resume(base, "bytes-file", edit=edit, extra=["--weights_only", "true"])
    assert trained(base, "bytes-file")
    assert loads == [(str(base[1]), True)]


def write_checkpoint(path, **records):
    torch.save(records, path)
    return path


def refuse_tokenizer_of(path, asked: str) -> None:
    """refuse_tokenizer_change on the checkpoint at ``path``, its metadata read as the CLI reads it."""
    refuse_tokenizer_change(path, asked, read_metadata(path))


def test_tokenizer_specs_are_compared_only_where_they_name_the_tokenizer(tmp_path):
    # Fingerprints where both are known; spec strings where both are 'byte' or 'bpe:N' (or the fingerprint says
    # bytes); otherwise the data module's own check at setup (a path names no BPE before the corpus is read).
    by_fingerprint = write_checkpoint(tmp_path / "a.ckpt", LMDataModule={"tokenizer_fingerprint": "0123456789abcdef"})
    with pytest.raises(ValueError, match=r"trained with another tokenizer \(fingerprint 0123456789abcdef; 'byte' has"):
        refuse_tokenizer_of(by_fingerprint, "byte")
    refuse_tokenizer_of(by_fingerprint, "bpe:300")  # no fingerprint before the corpus is read
    from_a_file = write_checkpoint(tmp_path / "b.ckpt", datamodule_hyper_parameters={"tokenizer": "tok/bpe.json"})
    refuse_tokenizer_of(from_a_file, "bpe:300")
    named = write_checkpoint(tmp_path / "c.ckpt", datamodule_hyper_parameters={"tokenizer": "bpe:300"})
    refuse_tokenizer_of(named, "bpe:300")
    with pytest.raises(ValueError, match=r"data.tokenizer='bpe:512', but .* trained with tokenizer 'bpe:300'"):
        refuse_tokenizer_of(named, "bpe:512")
    bytes_file = write_checkpoint(
        tmp_path / "d.ckpt",
        datamodule_hyper_parameters={"tokenizer": "tok/bytes.json"},
        LMDataModule={"tokenizer_fingerprint": byte_tokenizer().fingerprint},
    )
    with pytest.raises(ValueError, match=r"data.tokenizer='bpe:300', but .* trained with tokenizer 'tok/bytes.json'"):
        refuse_tokenizer_of(bytes_file, "bpe:300")  # its fingerprint says bytes: no BPE is that
    refuse_tokenizer_of(tmp_path / "not-a-checkpoint.ckpt", "bpe:512")  # the restore says what is wrong


def test_a_bpe_of_another_size_than_a_file_tokenizers_checkpoint_is_refused_before_the_corpus_is_read(tmp_path):
    """A path names no BPE, but the checkpoint's model records its vocabulary size, which data.tokenizer='bpe:N'
    fixes before any data work: a different N could only fail the restore, after the BPE was trained. An equal N is
    left to the data module's fingerprint check."""
    model = dataclasses.asdict(ModelConfig(vocab_size=300))
    from_a_file = write_checkpoint(
        tmp_path / "e.ckpt", datamodule_hyper_parameters={"tokenizer": "tok/bpe.json"}, **{MODEL_KEY: model}
    )
    refuse_tokenizer_of(from_a_file, "bpe:300")
    with pytest.raises(ValueError, match=r"trained with tokenizer 'tok/bpe.json' \(300 tokens; 'bpe:512' has 512\)"):
        refuse_tokenizer_of(from_a_file, "bpe:512")


def test_an_invalid_bpe_size_is_left_to_the_data_settings_that_name_its_range(tmp_path):
    """'bpe:5' names no tokenizer (N must be >= 258): the checkpoint check steps aside, so the user reads
    DataSettings' range instead of being told to switch to the checkpoint's tokenizer as if 'bpe:5' were one."""
    model = dataclasses.asdict(ModelConfig(vocab_size=300))
    named = write_checkpoint(
        tmp_path / "f.ckpt", datamodule_hyper_parameters={"tokenizer": "bpe:300"}, **{MODEL_KEY: model}
    )
    for invalid in ("bpe:5", "bpe:007x"):
        refuse_tokenizer_of(named, invalid)
    with pytest.raises(ValueError, match=r"'bpe:N' needs an integer N in \[258, "):
        parse_tokenizer_spec("bpe:5")
