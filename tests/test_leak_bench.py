"""bench/leak_iid.py runs and measures what it says: on independent random tokens a dense model's look-ahead probe
reads exactly 0, and so does the causal selection's, trained a few steps, where the paper's selection reads a
change (the full runs are in bench/RESULTS.md). And bench/tiny_branch.py's arms start from their branch point and
its equal-time arm gets its schedule."""

import argparse
import json
import statistics
import sys
from types import SimpleNamespace

import pytest
import torch
from training_helpers import REPO, one_thread, write_text_corpus

from lighthouse.data.datamodule import LMDataModule

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


def test_a_model_option_out_of_range_stops_with_its_message_before_training(capsys):
    with pytest.raises(SystemExit) as stop:
        leak_iid.main(["--backends", "lighthouse_naive", "--topk", "16", *SMALL])
    assert "model.arch.lighthouse.topk=16 is invalid: it must be a positive multiple of 128" in str(stop.value)
    assert "--topk" in str(stop.value) and "step" not in capsys.readouterr().out


def test_model_width_option_keeps_heads_of_32_and_the_default_model():
    """--dim scales the width with 32-wide heads and a 3x FFN; without it the model is the one every record before it
    measured (dim 64, two heads, FFN 192)."""
    parser = argparse.ArgumentParser()
    leak_iid.add_model_options(parser)
    for flags, (dim, heads, ffn) in (([], (64, 2, 192)), (["--dim", "128"], (128, 4, 384))):
        args = parser.parse_args(flags)
        args.vocab, args.causal = 257, True
        config = leak_iid.model_config("lighthouse_naive", args)
        assert (config.dim, config.n_heads, config.head_dim, config.ffn_hidden) == (dim, heads, 32, ffn)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dim", "96"])


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


class Tiny(torch.nn.Module):
    """A bigram model with what tiny_branch's Trainer and its evaluation (dense_eager) call: no attention layers."""

    attention_backends: tuple[str, ...] = ()
    layers: tuple = ()

    def __init__(self):
        super().__init__()
        self.embed, self.out = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)

    def set_attention_backend(self, name):
        pass

    def token_losses(self, tokens):
        logits = self.out(self.embed(tokens[:, :-1]))
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")


def test_tiny_branch_arms_start_from_the_branch_point_whatever_ran_before():
    """An arm trained after another from the same branch point ends exactly where it ends trained first: training
    one arm changes neither the shared state's weights nor its Adam moments and step count."""
    torch.manual_seed(0)
    args = SimpleNamespace(lr=3e-3, lr_warmup=2)
    batches = [torch.randint(0, 16, (2, 9)) for _ in range(6)]
    shared = tiny_branch.Trainer(Tiny(), args, total_steps=6)
    shared.train(batches, 0, 3, sparse=False)
    before = {k: v.clone() for k, v in shared.optimizer.state[shared.model.out.weight].items()}

    def arm():
        branch = shared.branch()
        branch.train(batches, 3, 6, sparse=False)
        return branch.model.out.weight.detach().clone()

    first, second = arm(), arm()
    after = shared.optimizer.state[shared.model.out.weight]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(first, second)


def test_tiny_branch_equal_time_arms_per_speedup_end_where_their_time_runs_out():
    """One E per speed-up: with none (1x) E is D to the last bit; a faster Lighthouse step leaves E fewer steps."""
    torch.manual_seed(0)
    args = SimpleNamespace(lr=3e-3, lr_warmup=2)
    batches = [torch.randint(0, 16, (2, 9)) for _ in range(12)]
    shared = tiny_branch.Trainer(Tiny(), args, total_steps=12)
    shared.train(batches, 0, 3, sparse=False)
    dense = shared.branch()
    dense.train(batches, 3, 12, sparse=False)
    same = tiny_branch.equal_time_arm(shared, batches, warmup=3, switch=7, speedup=1.0)
    assert same.end_step == 12 and torch.equal(same.model.out.weight, dense.model.out.weight)
    faster = tiny_branch.equal_time_arm(shared, batches, warmup=3, switch=7, speedup=4.0)
    assert faster.end_step == 3 + 1 + 5 and not torch.equal(faster.model.out.weight, dense.model.out.weight)


def test_tiny_branch_d_is_measured_where_each_e_ends_without_changing_d():
    """D's loss at E's last step (the offset E - D there is what bench/equal_time_estimate.py calibrates): D trained
    with those evaluations on the way ends bit for bit where D trained in one go ends, and each evaluation is the
    loss of D stopped at that step."""
    torch.manual_seed(0)
    args = SimpleNamespace(lr=3e-3, lr_warmup=2)
    batches = [torch.randint(0, 16, (2, 9)) for _ in range(12)]
    val = torch.randint(0, 16, (3, 9))
    shared = tiny_branch.Trainer(Tiny(), args, total_steps=12)
    shared.train(batches, 0, 3, sparse=False)
    whole, stopped = shared.branch(), shared.branch()
    whole.train(batches, 3, 12, sparse=False)
    losses = tiny_branch.train_with_stops(stopped, batches, 3, 12, {2, 7, 9, 12, 13}, val)
    assert sorted(losses) == [7, 9, 12]  # steps outside W..S are not on the way
    assert torch.equal(stopped.model.out.weight, whole.model.out.weight)
    short = shared.branch()
    short.train(batches, 3, 7, sparse=False)
    assert losses[7] == statistics.fmean(tiny_branch.window_losses(short.model, val))


def test_tiny_branch_saves_its_record_after_each_arm(tmp_path, monkeypatch):
    """A run of hours that is cut off keeps what it finished: the record is written, marked partial, once D is done,
    again after LH and after each E, and complete at the end; the file always holds the latest whole record."""
    saved = []
    write = tiny_branch.write_json

    def recording_write(args, done, record):
        write(args, done, record)
        saved.append(json.loads((tmp_path / "run.json").read_text())["results"][-1])

    monkeypatch.setattr(tiny_branch, "write_json", recording_write)
    corpus, data_dir = write_text_corpus(tmp_path / "corpus", n_docs=200), tmp_path / "data"  # not the stdlib in data/

    def small_data(**settings):
        return LMDataModule(**{**settings, "corpus": str(corpus), "data_dir": str(data_dir)})

    monkeypatch.setattr(tiny_branch, "LMDataModule", small_data)
    argv = ["--steps", "8", "--dim", "32", "--speedup", "2", "3", "--lr-warmup", "2", "--val-windows", "2"]
    monkeypatch.setattr(
        sys, "argv", ["tiny_branch.py", *argv, "--batch-size", "1", "--json", str(tmp_path / "run.json")]
    )
    with one_thread():
        tiny_branch.main()
    shape = [
        (r.get("partial", False), len(r["arms"]), len(r["arms"][0]["equal_time"]) if r["arms"] else 0) for r in saved
    ]
    assert shape == [(True, 0, 0), (True, 1, 0), (True, 1, 1), (True, 1, 2), (False, 1, 2)]
    assert not list(tmp_path.glob("*.tmp"))
