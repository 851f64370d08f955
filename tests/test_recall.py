"""Recall evaluation: a model that copies each value after its query scores 1.0, a uniform or random one scores
chance, ranks sum to the whole, and the command runs on a trained checkpoint."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from array_source import ArraySource
from trained_models import two_stage_checkpoints

from lighthouse.data.recall import eval_windows
from lighthouse.data.tokenizer import byte_tokenizer
from lighthouse.eval.recall import LOGLOSS_CHANCE, RecallConfig, evaluate_recall, main

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
