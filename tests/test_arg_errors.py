"""A mistyped key or flag ends in one error line (with the close match when there is one) and exit 2, not in
jsonargparse's usage dump of over a hundred lines with the error at the end; nothing is written."""

import subprocess
import sys

import pytest
from training_helpers import REPO, cli_subprocess_args, tiny_config

from lighthouse.train.arg_errors import close_match, describe
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


def test_a_config_that_is_not_yaml_is_named_with_its_line(tmp_path, capsys):
    # Before: 'Problems parsing config: ... in "<unicode string>", line 2': with two configs, which one?
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_steps: [1\n")
    lines = parse_error(capsys, "--config", str(bad))
    assert lines[0] == f"error: --config {bad} is not valid YAML: while parsing a flow sequence"
    assert lines[1] == f"  in {bad}, line 2, column 14" and "<unicode string>" not in "\n".join(lines)


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


# A key inside a nested setting (a dataclass, a class's init_args, a list item) or a value outside a Union of
# Literals failed as jsonargparse's ~10-line dump of every Union subtype it tried; each is one line now.
NESTED_CASES = {
    "dataclass-flag": (
        ["--model.arch.lighthouse.topkk", "128"],
        "model.arch.lighthouse.topkk is not an option; did you mean model.arch.lighthouse.topk?",
    ),
    "init-args-flag": (
        ["--model.optimizer.init_args.lrr", "0.1"],
        "model.optimizer.init_args.lrr is not an option; did you mean model.optimizer.init_args.lr?",
    ),
    "logger-init-args": (
        ["--trainer.logger.init_args.nme", "x"],
        "trainer.logger.init_args.nme is not an option; did you mean trainer.logger.init_args.name?",
    ),
    "no-close-match": (
        ["--model.arch.lighthouse.zzz", "1"],
        "model.arch.lighthouse.zzz is not an option (options of model.arch.lighthouse: levels, pooling_factor, "
        "topk, selection, scorer, dilation, causal)",
    ),
    "yaml-flow-without-space": (
        ["--stage.schedule", "[{start:0,attention:sdpa}]"],
        "stage.schedule[0].start:0 is not an option: YAML reads 'start:0' as one key: write 'start: 0', with a "
        "space after the colon (options of stage.schedule[0]: start, attention, rescale_lr)",
    ),
}


@pytest.mark.parametrize("args,line", NESTED_CASES.values(), ids=NESTED_CASES.keys())
def test_a_nested_mistake_is_one_line_with_its_full_key(capsys, args, line):
    lines = parse_error(capsys, *args)
    assert lines[0] == f"error: {line}"
    assert len(lines) == 2 and "fit --help" in lines[1], lines


# A value of the wrong type inside a nested setting printed the same dump, its one useful line ('Parser key "topk":
# Expected a <class 'int'>') in the middle; now one line with the full key, the value and the type expected.
WRONG_TYPE_CASES = {
    "dataclass-field": (
        ["--model.arch.lighthouse.topk", "abc"],
        "model.arch.lighthouse.topk=abc is invalid: expected int",
    ),
    "init-args": (
        ["--model.optimizer.init_args.lr", "abc"],
        "model.optimizer.init_args.lr=abc is invalid: expected float",
    ),
    "bool-field": (
        ["--model.arch.lighthouse.causal", "maybe"],
        "model.arch.lighthouse.causal=maybe is invalid: expected bool",
    ),
    "list-item": (
        ["--stage.schedule", "[{start: abc, attention: sdpa}]"],
        "stage.schedule[0].start=abc is invalid: expected int",
    ),
    "optional-int": (["--model.arch.n_layers", "abc"], "model.arch.n_layers=abc is invalid: expected int or null"),
}


@pytest.mark.parametrize("args,line", WRONG_TYPE_CASES.values(), ids=WRONG_TYPE_CASES.keys())
def test_a_wrong_type_is_one_line_with_its_full_key_and_type(capsys, args, line):
    lines = parse_error(capsys, *args)
    assert lines[0] == f"error: {line}"
    assert len(lines) == 2 and "fit --help" in lines[1], lines


@pytest.mark.parametrize(
    "yaml_text,line",
    [
        ("model:\n  arch:\n    lighthouse: {topk: abc}\n", "model.arch.lighthouse.topk=abc is invalid: expected int"),
        (
            "model:\n  optimizer:\n    class_path: torch.optim.AdamW\n    init_args: {lr: abc}\n",
            "model.optimizer.init_args.lr=abc is invalid: expected float",
        ),
    ],
    ids=["dataclass-field", "init-args"],
)
def test_a_wrong_type_in_a_config_file_is_one_line(tmp_path, capsys, yaml_text, line):
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml_text)
    lines = parse_error(capsys, "--config", str(wrong))
    assert lines[0] == f"error: {line}" and len(lines) == 2, lines


def test_a_class_setting_given_a_plain_value_is_not_said_to_expect_null(capsys):
    # Its dump lists 'Expected a <class 'NoneType'>' as the one class it names: that is not what was meant.
    lines = parse_error(capsys, "--model.arch.lighthouse", "abc")
    assert "expected null" not in "\n".join(lines) and len(lines) == 2, lines
    assert lines[0].startswith("error: model.arch.lighthouse=abc is invalid: it takes fields (levels, pooling_factor,")
    lines = parse_error(capsys, "--model.optimizer", "abc")
    taken = "it takes a class by its import path (module.Class) with its init_args, or null"
    assert lines[0] == f"error: model.optimizer=abc is invalid: {taken}"


def test_a_nested_config_file_typo_suggests_the_field_it_cuts_short(tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  arch:\n    lighthouse: {pooling: 4}\n")
    lines = parse_error(capsys, "--config", str(typo))
    assert lines[0] == (
        "error: model.arch.lighthouse.pooling is not an option; did you mean model.arch.lighthouse.pooling_factor?"
    )
    assert len(lines) == 2


@pytest.mark.parametrize("value", ["7", "bf17"])
def test_a_value_outside_the_choices_lists_them(capsys, value):
    lines = parse_error(capsys, "--trainer.precision", value)
    assert lines[0] == (
        f"error: trainer.precision={value} is invalid: valid values are 64, 32, 16, transformer-engine, "
        "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16, null"
    )
    assert len(lines) == 2


def test_an_unquoted_corpus_glob_expanded_by_the_shell_says_to_quote_it(tmp_path, capsys, monkeypatch):
    files = [str(tmp_path / f"doc{i}.txt") for i in (1, 2, 3)]
    # What the shell passes for `--data.corpus DIR/*.txt`: one argument per file (main() reads sys.argv).
    monkeypatch.setattr(sys, "argv", ["train.py", "fit", "--config", DEMO, "--data.corpus", *files])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"error: unrecognized arguments: {files[1]} {files[2]}"
    assert lines[1] == (
        "  --data.corpus takes one path or glob, and the shell expanded an unquoted glob into 3 files: quote it, "
        f"e.g. --data.corpus '{tmp_path}/*.txt'"
    )
    assert len(lines) == 3


def test_extra_words_elsewhere_get_no_glob_hint():
    message = "unrecognized arguments: b.txt"
    assert "--data.corpus" not in describe(message, [], "train.py fit", argv=["--data.seq_len", "8", "b.txt"])
    argv = ["--data.corpus", "a.txt", "--data.seq_len", "8", "b.txt"]
    assert "--data.corpus" not in describe(message, [], "train.py fit", argv=argv)
