"""What the branch report and the equal-time estimate accept as input (bench/branch_seeds.py's load_seeds): every
input must be one seed of bench/branch.py with a run, and the seeds of one report must share their plan, model, data
and evaluation windows. Anything else is refused in one line naming the input, before a report is written: each case
here used to change the aggregate without a word, or end in a traceback. Built on the archived seeds of
bench/report/runs/ (branch_64k seed 0 is the smallest with D and LH evaluated), copied and damaged."""

import json
import math
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from training_helpers import REPO, renumber_seed

from lighthouse.eval.run_logs import read_json_lines

sys.path.insert(0, str(REPO / "bench"))
import branch  # noqa: E402
import campaign  # noqa: E402

RUNS = REPO / "bench" / "report" / "runs"
SEED = "branch_64k-seed0"


def report(capsys, *runs: Path, report_dir: Path) -> tuple[int, str]:
    """(exit code, stderr) of ``branch.py report`` on ``runs``."""
    code = branch.main(["report", "--runs", *map(str, runs), "--report-dir", str(report_dir)])
    return code, capsys.readouterr().err


@pytest.fixture
def unpacked(tmp_path) -> Path:
    with tarfile.open(RUNS / f"{SEED}.tgz") as tar:
        tar.extractall(tmp_path / "seeds", filter="data")
    return tmp_path / "seeds" / SEED


def second_seed(folder: Path, seed: int = 1) -> Path:
    """A copy of the seed folder as another seed (what two sessions' archives of one design look like)."""
    twin = folder.parent / f"{folder.name}-as-{seed}"
    shutil.copytree(folder, twin)
    renumber_seed(twin, seed)
    return twin


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_an_input_that_is_not_a_seed_is_refused_and_the_report_left_as_it_was(tmp_path, capsys, unpacked):
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    (report_dir / "README.md").write_text("the committed report\n")
    code, err = report(capsys, RUNS / f"{SEED}.tgz", RUNS / "compare_32k.tgz", report_dir=report_dir)
    assert code == branch.BAD_FOLDER
    assert err == f"branch report: {RUNS / 'compare_32k.tgz'} has no plan.json: not a seed of bench/branch.py\n"
    assert (report_dir / "README.md").read_text() == "the committed report\n"
    shutil.rmtree(unpacked / "warmup")  # exported before its first job started: no run config
    shutil.rmtree(unpacked / "configs")
    code, err = report(capsys, unpacked, report_dir=tmp_path / "new")
    assert code == branch.BAD_FOLDER and "holds no run (exported before its first job started" in err
    assert not (tmp_path / "new").exists()


def test_archives_that_are_damaged_missing_or_hold_two_seeds_are_named(tmp_path, capsys, unpacked):
    cut = tmp_path / "cut.tgz"
    cut.write_bytes((RUNS / f"{SEED}.tgz").read_bytes()[:100_000])
    code, err = report(capsys, cut, report_dir=tmp_path / "r")
    assert code == branch.BAD_FOLDER
    assert err.startswith(f"branch report: {cut} is not a readable .tgz (") and "Traceback" not in err
    code, err = report(capsys, tmp_path / "none.tgz", report_dir=tmp_path / "r")
    assert err == f"branch report: {tmp_path / 'none.tgz'}: no such file or folder\n"
    two = tmp_path / "two.tgz"
    with tarfile.open(two, "w:gz") as tar:
        tar.add(unpacked, arcname=SEED)
        tar.add(second_seed(unpacked), arcname="branch_64k-seed1")
    code, err = report(capsys, two, report_dir=tmp_path / "r")
    assert err == (
        f"branch report: {two} holds 2 top-level folders ['branch_64k-seed0', 'branch_64k-seed1']: the archive of a "
        "seed (bench/branch.py export) holds its one folder\n"
    )
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    code, err = report(capsys, unpacked, report_dir=not_a_folder)
    assert err == f"branch report: --report-dir {not_a_folder} is a file, not a folder\n"
    assert not (tmp_path / "r").exists()


def edit_yaml(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_seeds_of_another_context_length_are_not_averaged_in(tmp_path, capsys, unpacked):
    twin = second_seed(unpacked)
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r")
    assert code == 0, err  # the twin alone differs in nothing but its seed
    # What a `-- --data.seq_len 32768` on one call does: the configs branch.py wrote stay as they were, the launch's
    # resolved config (LightningCLI's, extras included) says what ran.
    edit_yaml(twin / "D" / "config.yaml", lambda c: c["data"].update(seq_len=32768))
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r2")
    assert err == (
        "branch report: seed 1's D/config.yaml and seed 0's warmup/config.yaml trained different models, data or steps "
        "(data.seq_len): one report aggregates one setup\n"
    )


def test_runs_of_one_seed_must_share_their_step_settings_and_options_added_later_are_not_compared(
    tmp_path, capsys, unpacked
):
    twin = second_seed(unpacked)
    edit_yaml(twin / "LH" / "config.yaml", lambda c: c["trainer"].update(accumulate_grad_batches=4))
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r")
    assert "seed 1's LH/config.yaml and seed 0's warmup/config.yaml trained different models, data or steps " in err
    assert "(trainer.accumulate_grad_batches)" in err
    # A launch from before an option existed has no value for it; the divergence guard changes no step.
    edit_yaml(twin / "LH" / "config.yaml", lambda c: c["trainer"].update(accumulate_grad_batches=1))
    edit_yaml(twin / "LH" / "config.yaml", lambda c: c["model"].pop("divergence_factor"))
    edit_yaml(twin / "D" / "config.yaml", lambda c: c["model"].update(divergence_factor=1000.0))
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r2")
    assert code == 0, err
    edit_yaml(twin / "D" / "config.yaml", lambda c: c["model"].update(compile=not c["model"]["compile"]))
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r3")
    assert "(model.compile)" in err
    (twin / "D" / "config.yaml").write_text("model: [unclosed\n")
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r4")
    assert err.startswith(f"branch report: {twin / 'D' / 'config.yaml'} is not valid YAML (") and "Traceback" not in err


def test_arms_or_seeds_scored_on_other_windows_are_refused(tmp_path, capsys, unpacked):
    twin = second_seed(unpacked)
    lh = twin / "LH" / "final" / "window_losses.json"
    edit_json(lh, lambda d: d.update(window_ids=d["window_ids"][::-1]))
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r")
    assert err == f"branch report: seed 1: LH was evaluated on other windows than D ({lh})\n"
    edit_json(lh, lambda d: d.update(window_ids=d["window_ids"][:-1]))  # one window fewer than losses
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r")
    assert err == f"branch report: {lh}: 255 windows but 256 losses and 256 bucket rows: damaged\n"


def test_seeds_evaluated_on_different_windows_are_refused(tmp_path, capsys, unpacked):
    twin = second_seed(unpacked)
    for arm in ("D", "LH"):
        edit_json(
            twin / arm / "final" / "window_losses.json",
            lambda d: d.update(window_ids=[w + 1_000_000 for w in d["window_ids"]]),
        )
    code, err = report(capsys, unpacked, twin, report_dir=tmp_path / "r")
    assert code == branch.BAD_FOLDER and err.endswith("were evaluated on different validation windows\n")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_final_loss_is_refused(tmp_path, capsys, unpacked, bad):
    d = unpacked / "D" / "final" / "window_losses.json"
    edit_json(d, lambda data: data["losses"].__setitem__(3, bad))
    code, err = report(capsys, unpacked, report_dir=tmp_path / "r")
    assert err == f"branch report: {d}: every loss must be a finite number: damaged\n"


def test_a_damaged_json_file_is_named(tmp_path, capsys, unpacked):
    (unpacked / "plan.json").write_text('{"steps": 6')
    code, err = report(capsys, unpacked, report_dir=tmp_path / "r")
    assert code == branch.BAD_FOLDER and err.startswith(f"branch report: {unpacked / 'plan.json'} is not a JSON file")


def test_the_report_folder_must_be_named(capsys):
    with pytest.raises(SystemExit):
        branch.parse_args(["report", "--runs", str(RUNS / f"{SEED}.tgz")])
    assert "--report-dir" in capsys.readouterr().err


def test_a_launch_record_cut_off_by_a_kill_is_dropped_and_its_log_kept(tmp_path):
    run_dir = tmp_path / "LH"
    campaign.record_launch(run_dir, {"kind": "fit", "rc": 0})
    with open(run_dir / "launches.jsonl", "a") as f:
        f.write('{"kind": "fit", "sta')  # the bench process killed mid-write
    (run_dir / "launch-0.log").write_text("first job\n")
    (run_dir / "launch-1.log").write_text("the job whose record was cut off\n")
    assert read_json_lines(run_dir / "launches.jsonl") == [{"kind": "fit", "rc": 0}]
    logs = []
    campaign.launch(lambda args, log: logs.append(log.name) or 0, run_dir, [], "fit", None, "test")
    assert logs == ["launch-2.log"] and (run_dir / "launch-1.log").read_text().startswith("the job whose")
    records = read_json_lines(run_dir / "launches.jsonl")
    assert [r["kind"] for r in records] == ["fit", "fit"] and records[1]["rc"] == 0
    with open(run_dir / "launches.jsonl", "a") as f:
        f.write('{"broken"\n{"kind": "fit"}\n')  # damage before the last line is not a kill mid-write: refused
    with pytest.raises(ValueError, match=r"launches.jsonl:3 is not a JSON record: the file is damaged"):
        read_json_lines(run_dir / "launches.jsonl")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--lh-tps", "-5"], "--lh-tps -5.0: must be a number > 0"),
        (["--dense-tps", "0"], "--dense-tps 0.0: must be a number > 0"),
        (["--validation-s", "nan"], "--validation-s nan: must be a number >= 0"),
        (["--steps", "10", "--warmup", "20"], "must satisfy 0 <= warmup < switch < steps"),
    ],
)
def test_estimate_refuses_speeds_and_plans_it_cannot_time(capsys, args, said):
    with pytest.raises(SystemExit) as exit_:
        branch.parse_args(["estimate", *args])
    assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_the_warmups_training_time_counts_its_w_steps(tmp_path, unpacked):
    """The warm-up trains steps 1..W: W steps at its steady-state step time (it counted W + 1)."""
    import statistics

    from branch_seeds import load_seeds

    seed = load_seeds([unpacked], tmp_path / "s")[0]
    records = read_json_lines(unpacked / "warmup" / "throughput.jsonl")
    step_s = statistics.fmean(r["step_time_s"] for r in records)
    assert seed.warmup.train_s["dense"] == pytest.approx(seed.plan["warmup"] * step_s)


def damaged(capsys, tmp_path, unpacked, change) -> str:
    """stderr of a report on the seed after ``change(folder)``, asserting that it is one line and no traceback."""
    change(unpacked)
    code, err = report(capsys, unpacked, report_dir=tmp_path / "r")
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_final_evaluations_are_checked_before_a_table_reads_them(tmp_path, capsys, unpacked):
    lh = unpacked / "LH" / "final" / "window_losses.json"
    err = damaged(capsys, tmp_path, unpacked, lambda _: edit_json(lh, lambda d: d.update(step=500)))
    assert err == f"branch report: {lh} scored step 500, not the run's last step 640: not its final evaluation\n"
    edit_json(lh, lambda d: d.update(step=640))
    err = damaged(capsys, tmp_path, unpacked, lambda _: edit_json(lh, lambda d: d.pop("bucket_losses")))
    assert err == f"branch report: {lh} has no bucket_losses: damaged, or written by another version\n"


def test_duplicate_windows_and_a_lookahead_without_its_error_are_refused(tmp_path, capsys, unpacked):
    lh = unpacked / "LH" / "final"
    saved = (lh / "window_losses.json").read_text()
    edit_json(lh / "window_losses.json", lambda d: d["window_ids"].__setitem__(1, d["window_ids"][0]))
    err = damaged(capsys, tmp_path, unpacked, lambda _: None)
    assert "window_ids must be distinct integers" in err
    (lh / "window_losses.json").write_text(saved)
    err = damaged(
        capsys, tmp_path, unpacked, lambda _: edit_json(lh / "lookahead.json", lambda d: d.pop("standard_error"))
    )
    assert (
        err == f"branch report: {lh / 'lookahead.json'} has no standard_error: damaged, or written by another version\n"
    )


def test_a_plan_that_does_not_describe_its_runs_is_refused(tmp_path, capsys, unpacked):
    plan = unpacked / "plan.json"
    err = damaged(capsys, tmp_path, unpacked, lambda _: edit_json(plan, lambda d: d.update(seed=5)))
    assert err.endswith("trained seed 0, plan.json says seed 5\n")
    edit_json(plan, lambda d: d.update(seed=0, steps=1000))
    err = damaged(capsys, tmp_path, unpacked, lambda _: None)
    assert "trained to step 640, the plan's end of D is 1000" in err


def test_an_evaluated_arm_is_not_dropped_nor_timed_without_its_records(tmp_path, capsys, unpacked):
    lh = unpacked / "LH"
    saved = (lh / "throughput.jsonl").read_text()
    kept = [line for line in saved.splitlines(keepends=True) if '"attention": "sdpa"' not in line]
    (lh / "throughput.jsonl").write_text("".join(kept))
    err = damaged(capsys, tmp_path, unpacked, lambda _: None)
    assert err == (
        f"branch report: {lh / 'throughput.jsonl'} has no steady-state records of its dense phase: damaged, or cut "
        "short\n"
    )
    (lh / "throughput.jsonl").write_text(saved.replace('"step_time_s": ', '"step_time_s": -', 1))
    assert "has a step time or speed <= 0 or not finite" in damaged(capsys, tmp_path, unpacked, lambda _: None)
    (lh / "throughput.jsonl").write_text(saved)
    for events in lh.glob("events.out.tfevents.*"):
        events.unlink()
    err = damaged(capsys, tmp_path, unpacked, lambda _: None)
    assert err == (
        f"branch report: {lh} has a final evaluation but no event files with its training loss: damaged (it would be "
        "left out)\n"
    )
