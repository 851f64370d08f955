"""bench/extend_report.py on small run folders written here with TensorBoard's SummaryWriter: the table of a finished
pilot, an unfinished newest run skipped with a note, every bucket of a column from one validation step, and a logs
folder with nothing to report refused in one line (exit code 2). bench/extend_pilot.sh end to end, with real
training, is tests/test_extend_pilot.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import extend_report  # noqa: E402

BUCKETS = ("0-256", "256-1k", "1k-4k")
# The note lighthouse.train.logger writes: without it read_run moves every scalar up one step (older event files).
STEPS_NOTE = "Step N is the state after N optimizer steps."
EXPECTED = "the pilot's logs folder ($PILOT/logs) holding run folders under before/, lighthouse/ or dense/"


def losses(base: float, buckets=BUCKETS) -> dict[str, float]:
    """A loss per bucket: base, base + 0.1, ... so that each printed cell says which step and bucket it came from."""
    return {bucket: base + 0.1 * i for i, bucket in enumerate(buckets)}


def write_run(
    folder: Path,
    validations: dict[int, dict[str, float]],
    max_steps: int | None = None,
    stages: dict[int, int] | None = None,
    throughput: list[dict] | None = None,
) -> Path:
    """A run folder as training leaves it: the dense and the plain loss by position at each validation step (the
    plain one 1.0 higher, so a cell read from it shows), train/stage, config.yaml and throughput.jsonl."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    writer.add_text("steps", STEPS_NOTE, 0)
    for step, by_bucket in validations.items():
        for bucket, loss in by_bucket.items():
            writer.add_scalar(f"val/loss_dense_pos/{bucket}", loss, step)
            writer.add_scalar(f"val/loss_pos/{bucket}", loss + 1.0, step)
    for step, stage in (stages or {}).items():
        writer.add_scalar("train/stage", stage, step)
    writer.close()
    if max_steps is not None:
        (folder / "config.yaml").write_text(f"trainer:\n  max_steps: {max_steps}\n")
    if throughput:
        (folder / "throughput.jsonl").write_text("".join(json.dumps(record) + "\n" for record in throughput))
    return folder


def finished_pilot(logs: Path) -> None:
    """before validated at step 0; Lighthouse 4 steps + recovery 4 (switch after step 4), dense 8 steps."""
    write_run(logs / "before" / "2026-12-03_07-44-44", {0: losses(3.0)}, max_steps=1200)
    write_run(
        logs / "lighthouse" / "2026-12-03_07-45-04",
        {2: losses(2.5), 4: losses(2.4), 6: losses(2.3), 8: losses(2.2)},
        max_steps=8,
        stages={2: 1, 4: 1, 5: 2, 8: 2},
        throughput=[{"step": 2, "stage": 1, "tokens_per_sec": 3000.0}, {"step": 6, "stage": 2, "tokens_per_sec": 1000}],
    )
    write_run(
        logs / "dense" / "2026-12-03_07-47-30",
        {4: losses(2.2), 8: losses(2.0)},
        max_steps=8,
        throughput=[{"step": 2, "tokens_per_sec": 1200.0}, {"step": 6, "tokens_per_sec": 1400.0}],
    )


FINISHED_TABLE = [
    "| positions | imported, un-extended | Lighthouse, step 4 | Lighthouse + recovery, end | dense extension, end |",
    "|---|---|---|---|---|",
    "| step | 0 | 4 | 8 | 8 |",
    "| 0-256 | 3.0000 | 2.4000 | 2.2000 | 2.0000 |",
    "| 256-1k | 3.1000 | 2.5000 | 2.3000 | 2.1000 |",
    "| 1k-4k | 3.2000 | 2.6000 | 2.4000 | 2.2000 |",
    "tokens/s, Lighthouse: 3,000 (median over the throughput windows)",
    "tokens/s, recovery (dense): 1,000 (median over the throughput windows)",
    "tokens/s, dense: 1,300 (median over the throughput windows)",
]


def report(logs: Path, capsys) -> tuple[int, list[str], str]:
    """(exit code, stdout lines, stderr) of the report in-process."""
    try:
        extend_report.main([str(logs)])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_a_finished_pilot_gives_each_column_with_its_step(tmp_path, capsys):
    finished_pilot(tmp_path)
    assert report(tmp_path, capsys) == (0, FINISHED_TABLE, "")


@pytest.mark.parametrize(
    "newest, reason",
    [
        pytest.param(
            {"validations": {2: losses(9.0), 4: losses(9.0)}, "max_steps": 8},
            "last full validation at step 4 of trainer.max_steps 8",
            id="cut-at-step-4-of-8",
        ),
        pytest.param(
            # What the fault probe left: the start of an event file and nothing else (no config.yaml).
            {"validations": {2: losses(9.0), 4: losses(9.0), 8: losses(9.0)}},
            "no config.yaml with trainer.max_steps, so its end is unknown",
            id="no-config",
        ),
        pytest.param(
            {"validations": {2: losses(9.0), 8: losses(9.0, BUCKETS[:2])}, "max_steps": 8},
            "last full validation at step 2 of trainer.max_steps 8",
            id="last-validation-cut-off",
        ),
        pytest.param({"validations": {}, "max_steps": 8}, "no validation of every position bucket", id="no-validation"),
    ],
)
def test_an_unfinished_newest_run_is_skipped_with_a_note(tmp_path, capsys, newest, reason):
    finished_pilot(tmp_path)
    write_run(tmp_path / "lighthouse" / "2026-12-04_00-00-00", **newest)
    note = (
        f"note: skipped lighthouse/2026-12-04_00-00-00, unfinished ({reason}); "
        "the table shows lighthouse/2026-12-03_07-45-04"
    )
    assert report(tmp_path, capsys) == (0, [*FINISHED_TABLE, note], "")


def test_every_bucket_of_a_column_comes_from_one_step(tmp_path, capsys):
    """The validation at the switch lost its last bucket (logged at step 2 only): the switch column is step 2's."""
    finished_pilot(tmp_path)
    folder = tmp_path / "lighthouse" / "2026-12-03_07-45-04"
    for file in folder.iterdir():
        file.unlink()
    write_run(
        folder,
        {2: losses(2.5), 4: losses(2.4, BUCKETS[:2]), 6: losses(2.3), 8: losses(2.2)},
        max_steps=8,
        stages={2: 1, 4: 1, 5: 2, 8: 2},
    )
    code, out, err = report(tmp_path, capsys)
    assert (code, err) == (0, "")
    assert out[0] == FINISHED_TABLE[0].replace("Lighthouse, step 4", "Lighthouse, step 2")
    assert out[1:6] == [
        "|---|---|---|---|---|",
        "| step | 0 | 2 | 8 | 8 |",
        "| 0-256 | 3.0000 | 2.5000 | 2.2000 | 2.0000 |",
        "| 256-1k | 3.1000 | 2.6000 | 2.3000 | 2.1000 |",
        "| 1k-4k | 3.2000 | 2.7000 | 2.4000 | 2.2000 |",
    ]


def test_a_logs_folder_whose_runs_are_all_unfinished_is_refused_after_the_notes(tmp_path, capsys):
    write_run(tmp_path / "dense" / "2026-12-03_07-47-30", {4: losses(2.2)}, max_steps=8)
    note = (
        "note: skipped dense/2026-12-03_07-47-30, unfinished (last full validation at step 4 of trainer.max_steps 8); "
        "no finished run of its name is shown"
    )
    assert report(tmp_path, capsys) == (2, [note], f"error: {tmp_path} holds no finished run: give {EXPECTED}\n")


@pytest.mark.parametrize("case", ["missing", "a-file", "empty", "pretrain-only"])
def test_a_logs_folder_with_nothing_to_report_is_refused_in_one_line(tmp_path, capsys, case):
    logs = tmp_path / "logs"
    if case == "a-file":
        logs.write_text("x")
    elif case == "empty":
        logs.mkdir()
    elif case == "pretrain-only":  # the pilot after its first part, or the pre-training run's own folder
        write_run(logs / "pretrain_4k" / "2026-12-03_07-42-26", {200: losses(2.0)}, max_steps=200)
    if case in ("missing", "a-file"):
        expected = f"error: {logs} is not a folder: give {EXPECTED}\n"
    else:
        expected = f"error: {logs} holds no run of before, lighthouse, dense: give {EXPECTED}\n"
    assert report(logs, capsys) == (2, [], expected)


def test_a_damaged_throughput_file_is_refused_naming_it(tmp_path, capsys):
    finished_pilot(tmp_path)
    folder = tmp_path / "dense" / "2026-12-03_07-47-30"
    (folder / "throughput.jsonl").write_text('{"step": 2}\nnot json\n{"step": 6}\n')
    expected = f"error: {folder}: {folder}/throughput.jsonl:2 is not a JSON record: the file is damaged\n"
    assert report(tmp_path, capsys) == (2, [], expected)


def test_the_script_answers_a_missing_folder_with_one_line_and_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/extend_report.py", str(tmp_path / "nope")],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: {tmp_path / 'nope'} is not a folder: give {EXPECTED}\n"
