"""A mistyped key or flag ends in one error line (with the close match when there is one) and exit 2, not in
jsonargparse's usage dump of over a hundred lines with the error at the end; nothing is written."""

import subprocess

import pytest
from training_helpers import REPO, cli_subprocess_args, tiny_config

from lighthouse.train.arg_errors import close_match
from lighthouse.train.cli import main

DEMO = str(REPO / "configs" / "demo.yaml")


def parse_error(capsys, *args: str) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and "Traceback" not in err, err
    return err.strip().splitlines()


def test_config_file_typo_is_one_line_with_the_close_match(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  arch:\n    n_layer: 3\n")
    lines = parse_error(capsys, "--config", str(typo))
    assert lines[0] == "error: Subcommand 'fit' does not accept option 'model.arch.n_layer'"
    assert lines[1] == "  did you mean model.arch.n_layers?"
    assert len(lines) == 3 and "fit --help" in lines[2]


def test_flag_typo_is_one_line_and_never_taken_for_a_longer_flag(capsys):
    # argparse's abbreviations took --trainer.max_step for --trainer.max_steps and trained.
    lines = parse_error(capsys, "--trainer.max_step", "3")
    assert lines[:2] == ["error: unrecognized arguments: --trainer.max_step 3", "  did you mean trainer.max_steps?"]
    lines = parse_error(capsys, "--data.batchsize", "2")
    assert lines[1] == "  did you mean data.batch_size?"


def test_a_key_with_no_close_match_gets_no_suggestion(capsys):
    lines = parse_error(capsys, "--completely_unrelated", "1")
    assert lines[0] == "error: unrecognized arguments: --completely_unrelated 1" and len(lines) == 2


def test_a_missing_config_file_says_where_the_shipped_configs_are(tmp_path, capsys, monkeypatch):
    # A non-editable install has no configs/ folder: the message says so instead of only "File does not exist".
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/demo.yaml"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith('error: Parser key "config": File does not exist') and "configs/demo.yaml" in lines[0]
    assert "come with a clone of the repository, not with the installed package" in lines[1]


def test_close_match_prefers_the_same_group():
    known = ["model.arch.n_layers", "model.arch.n_heads", "data.n_layers_x"]
    assert close_match("model.arch.n_layer", known) == "model.arch.n_layers"
    assert close_match("model.arch.nothing_like_it", known) is None


@pytest.mark.slow
def test_train_py_config_typo_exits_2_and_writes_nothing(tmp_path):
    config = tiny_config(tmp_path, "typo", max_steps=2)
    cmd, env = cli_subprocess_args(tmp_path, config, "typo", extra=["--model.arch.n_layr", "3"])
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: unrecognized arguments: --model.arch.n_layr 3", lines
    assert "did you mean model.arch.n_layers?" in lines[1] and len(lines) <= 4
    assert not (tmp_path / "logs").exists()
