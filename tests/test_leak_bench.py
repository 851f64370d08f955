"""bench/leak_iid.py runs and measures what it says: on independent random tokens a dense model's look-ahead probe
reads exactly 0, and so does the causal selection's, trained a few steps, where the paper's selection reads a
change (the full runs are in bench/RESULTS.md). And bench/tiny_branch.py's equal-time arm gets its schedule."""

import sys
from types import SimpleNamespace

import pytest
import torch
from training_helpers import REPO, one_thread

sys.path.insert(0, str(REPO / "bench"))
import leak_iid  # noqa: E402
import tiny_branch  # noqa: E402

SMALL = ["--steps", "2", "--every", "1", "--batch-size", "1", "--test-windows", "2", "--probe-windows", "2"]


def test_dense_and_causal_models_read_no_look_ahead(tmp_path):
    with one_thread():
        record = leak_iid.main(
            ["--backends", "sdpa", "lighthouse_naive", "--causal", *SMALL, "--json", str(tmp_path / "leak.json")]
        )
    assert [r["backend"] for r in record["results"]] == ["sdpa", "lighthouse_naive+causal"]
    for r in record["results"]:
        assert [step for step, _ in r["curve"]] == [1, 2]
        assert r["probe_cut"] == 0.0 and r["probe_by_distance"] == [0.0] * 5
    assert (tmp_path / "leak.json").exists()


def test_the_papers_selection_reads_a_look_ahead():
    with one_thread():
        (result,) = leak_iid.main(["--backends", "lighthouse_naive", *SMALL])["results"]
    assert result["backend"] == "lighthouse_naive" and result["probe_cut"] != 0.0


def test_tiny_branch_equal_time_arm_fits_the_rest_of_the_schedule():
    """bench/tiny_branch.py's E arm: its step count is LH's time in dense steps, and its LR is D's up to the branch
    point, then anneals to the floor (0.1) at its own last step instead of being cut mid-schedule."""
    assert tiny_branch.equal_time_end(150, 375, 600, 2.3) == 150 + 98 + 225
    assert tiny_branch.equal_time_end(0, 375, 600, 1.0) == 600  # no speed-up: E is D
    args = SimpleNamespace(lr=3e-3, lr_warmup=20)
    dense = tiny_branch.Trainer(torch.nn.Linear(2, 2), args, total_steps=600)
    equal = dense.branch()
    equal.end_early(150, 473)
    assert [equal.lr_factor(s) for s in (0, 19, 100, 150)] == [dense.lr_factor(s) for s in (0, 19, 100, 150)]
    assert dense.lr_factor(300) < equal.lr_factor(151) < dense.lr_factor(150)
    assert equal.lr_factor(472) == pytest.approx(dense.lr_factor(599), abs=1e-5)
    assert equal.lr_factor(473) == pytest.approx(0.1) == dense.lr_factor(600)
    scratch = dense.branch()
    scratch.end_early(0, 300)  # from step 0: the whole schedule, warm-up included, in 300 steps
    assert scratch.lr_factor(0) == dense.lr_factor(0) and scratch.lr_factor(300) == pytest.approx(0.1)
