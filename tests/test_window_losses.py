"""Per-window dense losses of a checkpoint (lighthouse.eval.window_losses): reproducible, aligned between runs of
the same data settings, equal on average to what validation logs, and paired window by window."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import fields, replace

import lightning as L
import numpy as np
import pytest
from tool_probes import (
    SHARED_BAD_FLAGS,
    assert_refused_before_the_checkpoint,
    command_error,
    run_module,
)
from trained_models import two_stage_checkpoints
from training_helpers import write_text_corpus

from lighthouse.checkpoint.read import read_checkpoint
from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.settings import DataSettings
from lighthouse.eval.val_windows import read_windows, window_ids
from lighthouse.eval.window_losses import WindowLosses, compare, default_out, evaluate_checkpoint, main
from lighthouse.train import exits
from lighthouse.train.lit_module import LitLM

SPLIT = {"seq_len": 512, "data_fingerprint": "d", "tokenizer_fingerprint": "t", "val_windows_available": 10}


def made_up(ids, losses, buckets=None, split=SPLIT) -> WindowLosses:
    losses = [float(x) for x in losses]
    buckets = [[x, x] for x in losses] if buckets is None else buckets
    return WindowLosses("x.ckpt", 1, "sdpa", None, dict(split), list(ids), losses, ["0-256", "256-512"], buckets)


def test_compare_pairs_windows_by_index_not_by_order():
    a = made_up([0, 3, 6, 9], [2.0, 2.1, 2.2, 2.3])
    # b holds the same windows in another order, one more window, and one fewer: only 0, 3, 9 pair up.
    b = made_up([9, 3, 5, 0], [2.5, 2.3, 9.0, 2.0])
    paired = compare(a, b)
    diffs = np.array([0.0, 0.2, 0.2])  # windows 0, 3, 9
    assert paired.windows == 3
    assert paired.difference == pytest.approx(diffs.mean())
    assert paired.standard_error == pytest.approx(diffs.std(ddof=1) / math.sqrt(3))
    assert paired.bucket_difference == pytest.approx([diffs.mean()] * 2)
    assert paired.mean_a == pytest.approx(np.mean([2.0, 2.1, 2.3]))
    assert "| 0-256 |" in paired.table()


def test_compare_refuses_different_splits():
    a = made_up([0, 1], [2.0, 2.0])
    for key in ("seq_len", "data_fingerprint", "tokenizer_fingerprint"):
        b = made_up([0, 1], [2.0, 2.0], split={**SPLIT, key: "other"})
        with pytest.raises(ValueError, match=f"different validation splits \\({key}"):
            compare(a, b)
    with pytest.raises(ValueError, match="share no window"):
        compare(a, made_up([5, 6], [2.0, 2.0]))


def test_file_round_trip_and_default_place(tmp_path):
    a = made_up([0, 3], [2.0, 2.5])
    assert WindowLosses.load(a.save(tmp_path / "a.json")) == a
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a window-loss file"):
        WindowLosses.load(tmp_path / "bad.json")
    run = tmp_path / "logs" / "run" / "v1"
    assert default_out(run / "checkpoints" / "step000004.ckpt") == run / "window_losses" / "step000004.json"
    assert default_out(tmp_path / "x.ckpt") == tmp_path / "x.window_losses.json"


@pytest.mark.slow
def test_same_checkpoint_twice_gives_identical_losses_and_runs_align(tmp_path_factory, tmp_path, capsys):
    ckpts = two_stage_checkpoints(tmp_path_factory)
    first = main(["--ckpt", str(ckpts[2]), "--windows", "5", "--out", str(tmp_path / "a.json"), "--device", "cpu"])
    again = evaluate_checkpoint(ckpts[2], windows=5)
    assert first.losses == again.losses and first.bucket_losses == again.bucket_losses  # bitwise, not approx
    assert WindowLosses.load(tmp_path / "a.json") == first
    assert "5 windows" in capsys.readouterr().out
    assert len(set(first.window_ids)) == 5 and first.step == 4
    assert first.buckets == ["0-256", "256-512"]
    # Another checkpoint of the same data settings (stage 1, step 2): the same windows under the same ids.
    other = evaluate_checkpoint(ckpts[1], windows=5)
    assert other.window_ids == first.window_ids and other.split == first.split and other.step == 2
    paired = compare(other, first)
    assert paired.windows == 5
    assert paired.difference == pytest.approx(np.mean(np.subtract(first.losses, other.losses)))
    assert paired.standard_error > 0
    # More windows than the split holds: all of them, once each.
    everything = evaluate_checkpoint(ckpts[2], windows=10_000)
    assert everything.window_ids == list(range(everything.split["val_windows_available"]))


@pytest.mark.slow
def test_mean_of_window_losses_is_the_validation_loss_dense(tmp_path_factory, tmp_path):
    """The stage-1 checkpoint validates with Lighthouse (val/loss) and dense (val/loss_dense) attention; the
    command's mean over the same windows is val/loss_dense, and its bucket means val/loss_dense_pos/*.
    Tolerance 1e-5: validation sums fp32 losses (MeanMetric), the command fp64 means of the same fp32 losses."""
    ckpt = two_stage_checkpoints(tmp_path_factory)[1]
    saved = read_checkpoint(ckpt)["datamodule_hyper_parameters"]
    settings = DataSettings(**{f.name: saved[f.name] for f in fields(DataSettings)})
    settings = replace(settings, val_batches=3, progress=False)  # 3 batches of 2: 6 windows
    module = LitLM.load_from_checkpoint(ckpt)  # loaded dense for inference; validate as stage 1 trained it
    module.set_attention_backend("lighthouse_naive")  # so val/loss and val/loss_dense differ
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    logged = trainer.validate(module, datamodule=LMDataModule(**vars(settings)), verbose=False)[0]
    result = evaluate_checkpoint(ckpt, windows=3 * settings.batch_size)
    assert len(result.window_ids) == 6
    assert result.mean == pytest.approx(logged["val/loss_dense"], abs=1e-5)
    assert abs(result.mean - logged["val/loss"]) > 1e-4  # the test can tell the two apart
    for j, name in enumerate(result.buckets):
        assert np.mean([row[j] for row in result.bucket_losses]) == pytest.approx(
            logged[f"val/loss_dense_pos/{name}"], abs=1e-5
        )


# Each with a checkpoint that does not exist: every flag is checked before the checkpoint is looked for.
BAD_FLAGS = {
    "windows-0": (["--windows", "0"], "--windows=0 is invalid: must be an integer >= 1"),
    "batch-size-0": (
        ["--batch-size", "0"],
        "--batch-size=0 is invalid: must be an integer >= 1 (omit it for the run's batch_size)",
    ),
    "out-is-a-folder": (["--out", "{tmp}"], "--out='{tmp}' is invalid: it is a folder; name a file"),
    "out-under-a-file": (
        ["--out", "{tmp}/a_file/losses.json"],
        "--out='{tmp}/a_file' is invalid: it is an existing file, not a folder",
    ),
    **SHARED_BAD_FLAGS,
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_a_bad_flag_is_one_line_and_exit_2_before_the_checkpoint_is_read(case, tmp_path, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    assert_refused_before_the_checkpoint(main, BAD_FLAGS[case], tmp_path, capsys, monkeypatch)


def test_a_missing_compare_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    a = made_up([0, 1], [2.0, 2.0]).save(tmp_path / "a.json")
    b = str(tmp_path / "b.json")
    line = command_error(main, ["--compare", str(a), b], capsys)
    assert line == f"error: --compare={b!r} is invalid: [Errno 2] No such file or directory: {b!r}"


def test_damaged_compare_files_are_one_line_each_and_precisions_are_not_mixed(tmp_path, capsys, monkeypatch):
    # Before: an AttributeError or IndexError traceback, or a missing field named without its file.
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    a = made_up([0, 1], [2.0, 2.0]).save(tmp_path / "a.json")
    b = tmp_path / "b.json"
    saved = json.loads(a.read_text())
    for content, said in (
        ([1, 2], "is not a window-loss file of format 'lighthouse.window_losses/1' (format 'list')"),
        ({k: v for k, v in saved.items() if k != "losses"}, "has no losses: damaged"),
        ({**saved, "losses": [2.0]}, "needs one loss and one bucket row per distinct window: damaged"),
        ({**saved, "window_ids": [0, 0]}, "needs one loss and one bucket row per distinct window: damaged"),
        ({**saved, "bucket_losses": [[2.0], [2.0]]}, "needs one loss per bucket"),
        ({**saved, "losses": [2.0, float("nan")]}, "holds a loss that is not finite: damaged"),
    ):
        b.write_text(json.dumps(content))
        line = command_error(main, ["--compare", str(a), str(b)], capsys)
        assert line.startswith(f"error: --compare={str(b)!r} is invalid: {b} ") and said in line, line
    with pytest.raises(ValueError, match=r"different precisions \(autocast None vs 'bfloat16'\)"):
        compare(made_up([0, 1], [2.0, 2.0]), dataclasses.replace(made_up([0, 1], [2.0, 2.0]), autocast="bfloat16"))


def test_a_run_name_is_its_newest_checkpoint_and_the_losses_go_into_that_run(tmp_path_factory, tmp_path, capsys):
    """``--ckpt logs/<name>``: the newest checkpoint of the run with the newest one, as export and generate read it;
    the default --out is that run's window_losses/ folder."""
    source = two_stage_checkpoints(tmp_path_factory)[2].parent
    run = tmp_path / "logs" / "demo" / "2026-01-01_00-00-00"
    shutil.copytree(source, run / "checkpoints")
    assert exits.run(main, ["--ckpt", str(tmp_path / "logs" / "demo"), "--windows", "2", "--device", "cpu"]) == 0
    newest = run / "checkpoints" / "last.ckpt"  # step 4, as step000004.ckpt
    assert f"window losses, {newest} (step 4)" in capsys.readouterr().out
    saved = WindowLosses.load(run / "window_losses" / "last.json")
    assert saved.ckpt == str(newest) and saved.step == 4 and len(saved.losses) == 2


@pytest.mark.slow
def test_the_module_exits_0_on_a_run_folder_and_2_without_a_traceback_on_a_bad_flag(tmp_path_factory, tmp_path):
    """What bench/branch.py and bench/lookahead_probe.sh run: the exit code is the outcome."""
    run = two_stage_checkpoints(tmp_path_factory)[2].parents[1]
    command = ["lighthouse.eval.window_losses", "--ckpt", str(run), "--windows", "2"]
    done = run_module(*command, "--out", str(tmp_path / "losses.json"), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert len(WindowLosses.load(tmp_path / "losses.json").losses) == 2
    done = run_module(*command, "--windows", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == "error: --windows=0 is invalid: must be an integer >= 1", done.stderr


def test_hundreds_of_validation_windows_are_the_commands_windows(tmp_path):
    """val_batches has no upper bound: 150 batches of 2 serve 300 distinct windows, and the command's window ids
    for 300 are exactly those windows, token for token."""
    dm = LMDataModule(
        corpus=str(write_text_corpus(tmp_path / "corpus")),
        data_dir=str(tmp_path / "data"),
        seq_len=16,
        batch_size=2,
        val_batches=150,
        progress=False,
        tokenize_workers=1,
    )
    dm.setup("validate")
    served = np.concatenate([b["tokens"].numpy() for b in dm.val_dataloader()])
    assert served.shape == (300, 17)
    ids = window_ids(dm, 300)
    assert len(np.unique(ids)) == 300
    assert np.array_equal(ids, dm.val_dataset().windows)
    assert np.array_equal(read_windows(dm, ids).numpy(), served)
