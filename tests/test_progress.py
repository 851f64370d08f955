"""The progress display counts optimizer steps up to max_steps, also after a resume, with metrics on one line."""

import json
import re
import subprocess

import pytest
from training_helpers import cli_subprocess_args, fit, tiny_config

from lighthouse.checkpoint.files import recorded_step
from lighthouse.eval.run_logs import EVENTS_GLOB, _read_events
from lighthouse.train.progress import StepProgressBar, metrics_line


@pytest.fixture(scope="module")
def stopped_at_4(tmp_path_factory):
    """A run stopped at step 4 of 8 (checkpoint step000004.ckpt) to resume from."""
    tmp_path = tmp_path_factory.mktemp("progress")
    fit(tmp_path, tiny_config(tmp_path, "bar", max_steps=4, every_n=4))
    return tmp_path


def resume_with_bar(tmp_path, tag: str, every_n: int = 4, **bar_args) -> StepProgressBar:
    config = tiny_config(tmp_path, "bar", max_steps=8, every_n=every_n)
    config["trainer"]["enable_progress_bar"] = True
    config["trainer"]["callbacks"].append(
        {"class_path": "lighthouse.train.progress.StepProgressBar", "init_args": bar_args}
    )
    ckpt = tmp_path / "logs" / "bar" / "checkpoints" / "step000004.ckpt"
    cli = fit(tmp_path, config, ckpt_path=str(ckpt), tag=tag)
    return cli.trainer.progress_bar_callback


def test_plain_lines_after_a_resume(stopped_at_4, capsys):
    """The console and the loggers count steps alike (lighthouse.train.logger): before, a validation printed "at
    step 6" was charted at 5, and "step 8/8" ended the curves at 7."""
    run = stopped_at_4 / "logs" / "bar"
    before = set(run.glob(EVENTS_GLOB))
    resume_with_bar(stopped_at_4, "plain", every_n=2, force_terminal=False, plain_every_s=0.0)
    lines = capsys.readouterr().out.splitlines()
    assert "training from step 4 to 8" in lines
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(" |")[0] for line in steps] == [f"step {n}/8 ({100 * n // 8}%)" for n in range(5, 9)]
    assert all(re.search(r"\| loss \d\.\d{3}", line) for line in steps)
    assert not any("Epoch" in line for line in lines)
    printed = {
        int(m.group(1)): float(m.group(2))
        for m in (re.match(r"validation at step (\d+) \| val lh (\d\.\d{3}) ", line) for line in lines)
        if m
    }
    assert list(printed) == [6, 8]
    # What TensorBoard shows: the steps in this launch's event file as written, not as run_logs reads them.
    (events,) = set(run.glob(EVENTS_GLOB)) - before
    charted = _read_events(events)
    val = {e.step: e.value for e in charted.Scalars("val/loss")}
    assert list(val) == list(printed) and all(round(val[s], 3) == printed[s] for s in printed)
    assert [e.step for e in charted.Scalars("train/loss")] == [5, 6, 7, 8]  # the last printed step, max_steps
    records = [json.loads(line) for line in (run / "throughput.jsonl").read_text().splitlines()]
    assert {r["step"] for r in records if r["step"] > 4} == {e.step for e in charted.Scalars("perf/tokens_per_sec")}


def test_terminal_bar_totals_after_a_resume(stopped_at_4, capsys):
    bar = resume_with_bar(stopped_at_4, "terminal", force_terminal=True)
    (train,) = [task for task in bar.progress.tasks if task.description == "train"]
    assert (train.completed, train.total) == (8, 8)
    drawn = capsys.readouterr().out
    assert "4/8" in drawn and "8/8" in drawn  # starts at the checkpoint's step, not at 0 of an epoch
    metrics = train.fields["metrics"]
    assert "\n" not in metrics and metrics.startswith("loss ") and len(metrics) < 80


def test_metrics_line_order_and_format():
    line = metrics_line(
        {
            "train/stage": 2.0,
            "perf/tokens_per_sec": 12345.6,
            "val/loss": 2.40123,
            "train/loss": 2.3,
            "custom/thing": 0.5,
            "bad": float("nan"),
        }
    )
    assert line == "loss 2.300 · val 2.401 · tok/s 12.3K · stage 2 · thing 0.500"


def test_metrics_line_labels_both_validation_losses_and_the_phase():
    both = {"val/loss": 2.1, "val/loss_dense": 2.5, "train/stage": 2.0}
    assert metrics_line(both, "lighthouse 2/3") == "val lh 2.100 · val dense 2.500 · lighthouse 2/3"
    dense = {"val/loss": 2.5, "val/loss_dense": 2.5, "train/stage": 3.0}
    assert metrics_line(dense, "dense 3/3") == "val 2.500 · dense 3/3"


def test_a_reader_that_goes_away_leaves_the_run_training_and_saving(tmp_path):
    """``train.py fit ... | head -1``: stdout's reader exits after one line. Before, the next line raised
    BrokenPipeError and the run ended with no checkpoint; now its output goes to /dev/null and it finishes."""
    config = tiny_config(tmp_path, "piped", max_steps=6, every_n=2)
    config["trainer"]["enable_progress_bar"] = True  # plain lines (stdout is a pipe): a step line and validations
    args, env = cli_subprocess_args(tmp_path, config, "piped")
    job = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = job.stdout.readline()
    job.stdout.close()  # the reader goes: every later write to the pipe fails
    err = job.communicate(timeout=600)[1]
    assert first and job.returncode == 0, err
    assert "BrokenPipeError" not in err
    assert recorded_step(tmp_path / "logs" / "piped" / "checkpoints" / "last.ckpt") == 6
