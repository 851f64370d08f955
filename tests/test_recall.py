"""Recall evaluation: a model that copies each value after its query scores 1.0, a uniform or random one scores
chance, ranks sum to the whole, and the command runs on a trained checkpoint."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from array_source import ArraySource
from tool_probes import (
    SHARED_BAD_FLAGS,
    assert_refused_before_the_checkpoint,
    command_error,
    json_folder_missing,
    run_module,
)
from trained_models import two_stage_checkpoints

from lighthouse.data.recall import eval_windows
from lighthouse.data.tokenizer import byte_tokenizer
from lighthouse.eval.recall import LOGLOSS_CHANCE, RecallConfig, RecallScores, evaluate_recall, main
from lighthouse.train import exits

TOK = byte_tokenizer()  # token id = byte value, so the stub models read the inputs as text


def windows(seq_len=1024, n=8, pairs=8):
    rng = np.random.default_rng(0)
    text = rng.choice(np.frombuffer(b"abcdefgh ijklm\n", dtype=np.uint8), size=40000).astype(np.int64)
    return eval_windows(TOK, ArraySource(text), seq_len, n_windows=n, pairs=pairs)


def copying_model(shift: int = 0):
    """Reads its inputs only: after each 'assert KV_xxxx == "' it predicts the digits last assigned to KV_xxxx
    (``shift`` moves the prediction by that many positions: a misaligned scorer would then score 1.0)."""

    def logits_fn(inputs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*inputs.shape, 257)
        for b, row in enumerate(inputs.tolist()):
            text = bytes(row).decode("latin-1")
            assigned = [(m.start(), m[1], m[2]) for m in re.finditer(r'KV_([0-9a-f]{4}) = "(\d{5})"', text)]
            for m in re.finditer(r'assert KV_([0-9a-f]{4}) == "', text):
                value = [v for start, key, v in assigned if key == m[1] and start < m.start()][-1]
                for j, digit in enumerate(value):
                    t = m.end() - 1 + j + shift  # logits at t predict token t + 1
                    if 0 <= t < out.shape[1]:
                        out[b, t, ord(digit)] = 30.0
        return out

    return logits_fn


def test_a_model_that_copies_the_value_after_its_query_scores_one_in_every_bin():
    recall = windows(seq_len=20480, n=4, pairs=8)
    scores = evaluate_recall(copying_model(), TOK, recall)
    assert scores.labels == ["64-1k", "1k-4k", "4k-16k", "16k-20k"]
    metrics = scores.metrics()
    for label in scores.labels:
        assert metrics[f"recall/{label}/digit_acc"] == 1.0 and metrics[f"recall/{label}/exact"] == 1.0
        assert metrics[f"recall/{label}/digit_logloss"] < 1e-6
    assert scores.counts[:, 3].sum() == 4 * 8


def test_a_copy_one_position_off_scores_near_chance():
    scores = evaluate_recall(copying_model(shift=1), TOK, windows())
    (m,) = [scores.bin(i) for i in range(len(scores.labels))]
    assert m["exact"] == 0.0 and m["digit_acc"] < 0.3


def test_a_uniform_model_scores_chance_and_a_random_one_near_it():
    recall = windows(n=16)
    uniform = evaluate_recall(lambda x: torch.zeros(*x.shape, 257), TOK, recall)
    m = uniform.bin(0)
    assert m["digit_logloss"] == pytest.approx(LOGLOSS_CHANCE, abs=1e-6) and LOGLOSS_CHANCE == math.log(10)
    assert m["exact"] == 0.0 and abs(m["digit_acc"] - 0.1) < 0.05  # ties: always '0', right 1 time in 10
    gen = torch.Generator().manual_seed(0)
    random = evaluate_recall(lambda x: torch.randn(*x.shape, 257, generator=gen), TOK, recall).bin(0)
    assert abs(random["digit_acc"] - 0.1) < 0.05 and random["exact"] == 0.0
    assert random["digit_logloss"] > math.log(10)  # random logits are confidently wrong half the time


def test_windows_split_over_ranks_sum_to_the_whole():
    recall = windows(n=7, pairs=4)
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(257, 257, generator=gen)

    def model(x):  # deterministic in the inputs, so every rank scores a window alike
        return table[x]

    whole = evaluate_recall(model, TOK, recall).counts
    parts = [evaluate_recall(model, TOK, recall, rank=r, world_size=3).counts for r in range(3)]
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-12)
    assert whole[:, 3].sum() == 7 * 4


def test_bad_recall_settings_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"model.recall.windows=0 must be an integer >= 1"):
        RecallConfig(windows=0).validate(1024)
    with pytest.raises(ValueError, match=r"model.recall.pairs=65 must be an integer in \[1, 64\]"):
        RecallConfig(pairs=65).validate(1024)
    with pytest.raises(ValueError, match=r"model.recall.length=4096 must be None or an integer in \[1, 1024\]"):
        RecallConfig(length=4096).validate(1024)


def test_the_command_scores_a_trained_checkpoint(tmp_path_factory, tmp_path, capsys):
    ckpt = two_stage_checkpoints(tmp_path_factory)[2]
    out = tmp_path / "recall.json"
    scores = main(["--ckpt", str(ckpt), "--windows", "3", "--pairs", "2", "--json", str(out), "--device", "cpu"])
    assert scores.labels == ["64-512"] and scores.counts[0, 3] == 6
    assert "| 64-512 | 6 |" in capsys.readouterr().out and '"64-512"' in out.read_text()


def test_a_bin_no_query_fell_in_has_no_scores_and_the_record_says_what_was_scored(tmp_path_factory, tmp_path):
    # Before: a bin with 0 queries read digit log-loss 0.000, a perfect score, which report means averaged in.
    scores = RecallScores(["64-1k", "1k-4k"], np.array([[1.0, 3.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]), 2)
    assert scores.bin(1) == {"digit_acc": None, "exact": None, "digit_logloss": None}
    assert scores.as_dict()["bins"]["1k-4k"]["queries"] == 0 and "1k-4k" not in "".join(scores.metrics())
    assert "| 1k-4k | 0 | - | - | - |" in scores.table() and "| 64-1k | 2 | 0.750 | 0.500 | 0.500 |" in scores.table()
    ckpt = two_stage_checkpoints(tmp_path_factory)[2]
    out = tmp_path / "recall.json"
    main(["--ckpt", str(ckpt), "--windows", "3", "--pairs", "2", "--seed", "7", "--json", str(out), "--device", "cpu"])
    record = json.loads(out.read_text())
    assert {k: record[k] for k in ("windows", "pairs", "length", "seed")} == {
        "windows": 3,
        "pairs": 2,
        "length": 512,
        "seed": 7,
    }


def test_the_result_never_replaces_the_checkpoint_nor_a_file_that_is_no_result(tmp_path_factory, tmp_path, capsys):
    ckpt = two_stage_checkpoints(tmp_path_factory)[2]
    before = ckpt.read_bytes()
    for target, said in (
        (str(ckpt), "it is the file this command reads"),
        ("", "it must name a file, not be blank"),
    ):
        with pytest.raises(ValueError, match=said):
            main(["--ckpt", str(ckpt), "--json", target, "--device", "cpu"])
    log = tmp_path / "train.log"
    log.write_text("epoch 1\n")
    with pytest.raises(ValueError, match="it exists and holds no JSON result"):
        main(["--ckpt", str(ckpt), "--json", str(log), "--device", "cpu"])
    assert ckpt.read_bytes() == before and log.read_text() == "epoch 1\n"


# Each with a checkpoint that does not exist: every flag is checked before the checkpoint is looked for.
BAD_FLAGS = {
    "windows-0": (["--windows", "0"], "--windows=0 is invalid: must be an integer >= 1"),
    "pairs-65": (["--pairs", "65"], "--pairs=65 is invalid: must be an integer in [1, 64]"),
    "length-0": (
        ["--length", "0"],
        "--length=0 is invalid: must be an integer >= 1 (omit it for the training seq_len)",
    ),
    **SHARED_BAD_FLAGS,
    **json_folder_missing("recall.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_a_bad_flag_is_one_line_and_exit_2_before_the_checkpoint_is_read(case, tmp_path, capsys, monkeypatch):
    assert_refused_before_the_checkpoint(main, BAD_FLAGS[case], tmp_path, capsys, monkeypatch)


# Checked once the checkpoint is read (its seq_len 512; byte tokens, 46 a pair), before any model or window.
BAD_FOR_THE_CONTEXT = {
    "default-pairs-at-512": (
        [],
        "--pairs=8 is invalid: must be an integer in [1, 5] (pairs of 46 tokens may fill at most half of a window "
        "of 513 tokens)",
    ),
    "length-past-context": (
        ["--length", "1000", "--pairs", "2"],
        "--length=1000 is invalid: must be an integer in [1, 512] (the model's context)",
    ),
    "length-too-short": (
        ["--length", "100", "--pairs", "2"],
        "--length=100 is invalid: too short for a recall pair (a window of 101 tokens holds no key-to-query "
        "distance >= 64 (needs 111))",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FOR_THE_CONTEXT))
def test_pairs_and_length_that_the_context_cannot_hold_are_refused(case, tmp_path_factory, capsys, monkeypatch):
    """A run name (``logs/<name>``) stands for the newest checkpoint of its newest run."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    logs = two_stage_checkpoints(tmp_path_factory)[2].parents[2]
    extra, message = BAD_FOR_THE_CONTEXT[case]
    assert command_error(main, ["--ckpt", str(logs), "--device", "cpu", *extra], capsys) == "error: " + message


def test_a_run_folders_last_is_its_newest_checkpoint(tmp_path_factory, tmp_path, capsys):
    newest = two_stage_checkpoints(tmp_path_factory)[2].parent / "last.ckpt"  # step 4, as step000004.ckpt
    out = tmp_path / "recall.json"
    args = ["--ckpt", str(newest.parents[1] / "last"), "--windows", "1", "--pairs", "2", "--json", str(out)]
    assert exits.run(main, [*args, "--device", "cpu"]) == 0
    assert f"recall, {newest} (step 4)" in capsys.readouterr().out
    assert json.loads(out.read_text())["ckpt"] == str(newest)


@pytest.mark.slow
def test_the_module_exits_2_without_a_traceback(tmp_path):
    done = run_module("lighthouse.eval.recall", "--ckpt", str(tmp_path / "x.ckpt"), "--pairs", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == "error: --pairs=0 is invalid: must be an integer in [1, 64]", done.stderr


def test_training_with_recall_windows_logs_recall_per_bin_at_validation(tmp_path):
    from training_helpers import fit, logged_scalars, tiny_config

    config = tiny_config(tmp_path, "recall", max_steps=2, every_n=2, attention="sdpa")
    config["data"].update(recall_fraction=0.5, recall_pairs=2)
    config["model"]["recall"] = {"windows": 2, "pairs": 2}
    fit(tmp_path, config)
    log_dir = tmp_path / "logs" / "recall"
    for name in ("digit_acc", "exact", "digit_logloss"):
        (value,) = logged_scalars(log_dir, f"recall/64-512/{name}").values()
        assert math.isfinite(value)
    (loss,) = logged_scalars(log_dir, "recall/64-512/digit_logloss").values()
    assert 1.0 < loss < 5.0  # an almost untrained model: near ln 10


def test_recall_pairs_a_window_cannot_hold_are_refused_before_the_first_step(tmp_path):
    """Whether the pairs fit depends on the tokenizer's lines, so LitLM cannot refuse them when it is built; before,
    the run trained until its first validation and failed there."""
    from training_helpers import fit, logged_scalars, tiny_config

    config = tiny_config(tmp_path, "recall-too-many", max_steps=4, every_n=2, attention="sdpa")
    config["model"]["recall"] = {"windows": 2, "pairs": 8}  # 8 x 46 byte tokens > half of 513
    with pytest.raises(ValueError, match=r"^model.recall.pairs=8: recall windows of 513 tokens cannot hold 8 pairs"):
        fit(tmp_path, config)
    assert not logged_scalars(tmp_path / "logs" / "recall-too-many", "train/loss")
