"""Settings reachable from the command line: the stage switch and the throughput recorder as their own groups,
model flavors by name, field documentation as YAML comments."""

import pytest
import yaml
from training_helpers import REPO

from lighthouse.model.config import ModelConfig, model_flavor
from lighthouse.train.cli import main

DEMO = str(REPO / "configs" / "demo.yaml")


def printed_config(capsys, *args: str, config: str = DEMO) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_stage_switch_and_throughput_settings_are_flags(capsys):
    printed = printed_config(
        capsys, "--stage.switch_step", "10", "--stage.rewarmup_steps", "5", "--throughput.window", "3"
    )
    assert printed["stage"] == {
        "switch_step": 10,
        "stage2_backend": "sdpa",
        "rewarmup_steps": 5,
        "schedule": None,
        "min_start_step": 0,
    }
    assert printed["throughput"] == {"window": 3, "skip_steps": 3, "peak_tflops": None}


def test_schedule_is_a_flag_of_phases(capsys):
    schedule = "[{start: 0, attention: sdpa}, {start: 200, attention: lighthouse_naive, rescale_lr: true}]"
    printed = printed_config(capsys, "--stage.schedule", schedule)
    assert printed["stage"]["schedule"] == [
        {"start": 0, "attention": "sdpa", "rescale_lr": False},
        {"start": 200, "attention": "lighthouse_naive", "rescale_lr": True},
    ]


def test_flavor_by_name_and_explicit_fields_win(capsys):
    # lh_64k.yaml names the paper flavor and leaves the sizes null
    printed = printed_config(
        capsys,
        "--model.arch.flavor",
        "small",
        "--model.arch.n_layers",
        "12",
        config=str(REPO / "configs" / "lh_64k.yaml"),
    )
    arch = ModelConfig(**printed["model"]["arch"], seq_len=printed["data"]["seq_len"])
    small = model_flavor("small")
    assert (arch.dim, arch.n_heads, arch.ffn_hidden, arch.dense_layers) == (
        small.dim,
        small.n_heads,
        small.ffn_hidden,
        small.dense_layers,
    )
    assert arch.n_layers == 12
    with pytest.raises(ValueError, match=r"flavor='huge' is not one of \['debug', 'paper', 'paper_1m', 'small'\]"):
        ModelConfig(flavor="huge")


def test_print_config_comments_carry_field_docs(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", DEMO, "--print_config=comments"])
    text = capsys.readouterr().out
    assert "# Model (residual stream) width" in text
    assert "# Shorthand for two phases" in text
    assert "# Every phase, in order" in text


def test_grouped_callbacks_are_refused_in_trainer_callbacks(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [{"class_path": "lighthouse.train.stage.StageSwitch"}]}}))
    with pytest.raises(ValueError, match="StageSwitch, which the CLI always adds: set its arguments as stage"):
        main(
            [
                "fit",
                "--config",
                DEMO,
                "--config",
                str(extra),
                "--trainer.logger",
                "false",
                "--trainer.default_root_dir",
                str(tmp_path / "runs"),
            ]
        )
