"""Resuming: a change to what the trained weights compute is refused unless overridden, recipe changes are allowed,
optimizer and LR-schedule changes are applied and announced (before, a new LR on resume had no effect)."""

import dataclasses

import pytest
from training_helpers import fit, logged_scalars, tiny_config

from lighthouse.checkpoint.resume import COMPUTE, RECIPE, SHAPE
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


def test_changed_tokenizer_is_refused(base):
    def edit(config):
        config["data"]["tokenizer"] = "bpe:300"

    with pytest.raises(ValueError, match=r"shapes differ\): model.arch.vocab_size: checkpoint 257 vs config 300"):
        resume(base, "bpe", edit=edit)
    assert not trained(base, "bpe")
