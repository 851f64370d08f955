"""Inputs that ``bench/branch.py estimate|run`` and ``bench/compare.py report`` used to take without a word, or answer
with a traceback or a message naming no flag or file: each is now refused in one line naming it, before anything is
trained, timed or written. No training: the comparison folders are the archived bench/report/runs/compare_32k.tgz."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from training_helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import branch  # noqa: E402
import compare  # noqa: E402
import report  # noqa: E402

CONFIG = str(REPO / "bench" / "configs" / "branch_32k.yaml")
COMMANDS = {"estimate": ["estimate"], "run": ["run", "--config", CONFIG]}


def refused(capsys, argv: list[str]) -> str:
    """The one line ``branch.py`` refuses ``argv`` with (argparse's exit 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        branch.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err.splitlines()[-1]


# ---- bench/branch.py ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("share", ["inf", "nan", "-inf"])
def test_a_share_that_is_no_number_is_refused_with_its_range(capsys, command, share):
    # Before: estimate's inf was an OverflowError traceback, nan "cannot convert float NaN to integer".
    said = refused(capsys, [*COMMANDS[command], f"--share={share}"])
    assert f"--share {float(share)} (switch at step {float(share)}) must satisfy" in said
    assert "(--share from 0.201 to 0.999;" in said  # W 200, S 1000: the switch at steps 201 to 999


def test_a_share_range_is_said_only_where_one_exists(capsys):
    short = ["estimate", "--steps", "10", "--warmup", "2"]
    assert "(--share from 0.3 to 0.9;" in refused(capsys, [*short, "--share", "1"])
    assert branch.parse_args([*short, "--share", "0.3"]).share == 0.3  # the range's ends are in it
    assert branch.parse_args([*short, "--share", "0.9"]).share == 0.9
    assert "(no --share fits;" in refused(capsys, ["estimate", "--steps", "201", "--warmup", "200"])


@pytest.mark.parametrize("command", COMMANDS)
def test_an_arm_named_twice_is_refused(capsys, command):
    # Before: estimate counted D's minutes twice; run trained D once and exported and reported it done twice.
    said = refused(capsys, [*COMMANDS[command], "--arms", "D", "D", "LH", "LH"])
    assert said.endswith("--arms D D LH LH: D LH named more than once (each arm is one run)")


def test_estimate_refuses_e_without_d_and_lh_as_run_does(capsys):
    for command in COMMANDS.values():
        said = refused(capsys, [*command, "--arms", "E"])
        assert said.endswith("--arms E: E needs D and LH (its length comes from their step times)")
    assert branch.parse_args(["estimate", "--arms", "LH", "D", "E"]).arms == ["LH", "D", "E"]


def test_estimate_of_valid_arms_is_unchanged():
    times = branch.estimate(1000, arms=("D", "LH", "E"))
    assert set(times["train_min"]) == {"warmup", "D", "LH", "E"} and times["switch_step"] == 625


# ---- bench/compare.py report ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def archived(tmp_path_factory) -> Path:
    """bench/report/runs/compare_32k.tgz unpacked once: a comparison folder as the report loader reads it."""
    folder = tmp_path_factory.mktemp("archived")
    with tarfile.open(REPO / "bench" / "report" / "runs" / "compare_32k.tgz") as tar:
        tar.extractall(folder, filter="data")
    return folder / "compare_32k"


def copy_to(archived: Path, folder: Path, name: str = "cmp") -> Path:
    shutil.copytree(archived, folder / name)
    return folder / name


def report_of(capsys, *outs: Path, report_dir: Path) -> tuple[int, str]:
    """(exit code, stderr) of ``compare.py report``."""
    code = compare.main(["report", "--out", *map(str, outs), "--report-dir", str(report_dir)])
    return code, capsys.readouterr().err


def test_two_comparisons_of_one_folder_name_are_refused(tmp_path, capsys, archived):
    # Before: both sections linked cmp_*.png, the second comparison's plots, and exit 0.
    a, b = copy_to(archived, tmp_path / "a"), copy_to(archived, tmp_path / "b")
    code, err = report_of(capsys, a, b, report_dir=tmp_path / "report")
    assert code == 2 and err == (
        f"compare report: --out {a} and {b} have the same folder name 'cmp', which names a section and its PNGs: the "
        "second's plots would replace the first's; copy one under another name\n"
    )
    assert not (tmp_path / "report").exists()
    report.check_inputs([a, copy_to(archived, tmp_path / "b", "cmp2")], tmp_path / "report")  # other names: fine


def test_the_same_comparison_twice_is_refused(tmp_path, capsys, archived):
    # Before: its section twice in README.md, and exit 0.
    a = copy_to(archived, tmp_path / "a")
    again = tmp_path / "a" / ".." / "a" / "cmp"
    code, err = report_of(capsys, a, again, report_dir=tmp_path / "report")
    assert code == 2
    assert err == f"compare report: --out {a} and {again} are the same folder: its section would be there twice\n"
    assert not (tmp_path / "report").exists()


def test_a_damaged_compare_json_is_named(tmp_path, capsys, archived):
    # Before: "compare report: Unterminated string starting at: ..." without the file's name.
    out = copy_to(archived, tmp_path)
    plan = out / "compare.json"
    plan.write_text(plan.read_text()[:50])
    code, err = report_of(capsys, out, report_dir=tmp_path / "report")
    assert code == 2 and err.startswith(f"compare report: {plan} is not a JSON file (Unterminated string")
    plan.write_text("[1, 2]")
    code, err = report_of(capsys, out, report_dir=tmp_path / "report")
    assert err == f"compare report: {plan} holds a JSON list, not an object: damaged\n"


def test_a_report_dir_that_is_a_file_is_named_with_its_flag(tmp_path, capsys, archived):
    # Before: "compare report: [Errno 17] File exists: '...'" (or Errno 20 below it), no flag named.
    out = copy_to(archived, tmp_path)
    file = tmp_path / "notes.md"
    file.write_text("kept\n")
    code, err = report_of(capsys, out, report_dir=file)
    assert code == 2 and err == f"compare report: --report-dir {file} is a file, not a folder\n"
    code, err = report_of(capsys, out, report_dir=file / "report")
    assert err == f"compare report: --report-dir {file / 'report'}: {file} is a file, not a folder\n"
    assert file.read_text() == "kept\n"


def test_a_later_bad_comparison_leaves_no_report_and_no_folder(tmp_path, capsys, archived):
    # Before: --report-dir was made before any folder was read, and the first section's PNGs were written before the
    # second folder was refused: a new report folder left empty or with stray PNGs, an old one with a mixed report.
    good, bad = copy_to(archived, tmp_path, "cmp"), copy_to(archived, tmp_path, "bad")
    (bad / "compare.json").write_text("[]")
    code, err = report_of(capsys, good, bad, report_dir=tmp_path / "new" / "report")
    assert code == 2 and err == f"compare report: {bad / 'compare.json'} holds a JSON list, not an object: damaged\n"
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "README.md").write_text("the old report\n")
    assert report_of(capsys, good, bad, report_dir=old)[0] == 2
    assert [p.name for p in old.iterdir()] == ["README.md"] and (old / "README.md").read_text() == "the old report\n"


def test_a_comparison_report_that_fails_while_writing_leaves_the_old_one(tmp_path, capsys, archived):
    # Before: cmp_val_loss_time.png and cmp_val_loss_tokens.png were replaced, then the run stopped at the folder
    # in the place of cmp_passkey.png, README.md left as it was: the old text linking half the new plots.
    out, report_dir = copy_to(archived, tmp_path), tmp_path / "report"
    report_dir.mkdir()
    old = {name: f"old {name}\n" for name in ("README.md", "cmp_val_loss_time.png", "cmp_val_loss_tokens.png")}
    for name, text in old.items():
        (report_dir / name).write_text(text)
    (report_dir / "cmp_passkey.png").mkdir()
    code, err = report_of(capsys, out, report_dir=report_dir)
    assert code == 2 and err == (
        f"compare report: --report-dir {report_dir}: {report_dir / 'cmp_passkey.png'} is a folder where the report "
        "writes a file; nothing was written\n"
    )
    assert {p.name for p in report_dir.iterdir()} == {*old, "cmp_passkey.png"}  # the staging folder gone too
    assert all((report_dir / name).read_text() == text for name, text in old.items())
    (report_dir / "cmp_passkey.png").rmdir()
    assert report_of(capsys, out, report_dir=report_dir) == (0, "")
    assert (report_dir / "README.md").read_text().startswith("# Lighthouse + recovery vs dense")
    assert len(list(report_dir.glob("cmp_*.png"))) == 5 and not list(report_dir.glob(".report-staging-*"))


def test_a_killed_report_s_staging_folder_is_removed_by_the_next_and_a_live_one_kept(tmp_path, capsys, archived):
    # Before: a report killed mid-write left .report-staging-<pid> in the report folder for good.
    out, report_dir = copy_to(archived, tmp_path), tmp_path / "report"
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = report_dir / f".report-staging-{done.stdout.strip()}"  # that process has exited
    killed.mkdir(parents=True)
    (killed / "cmp_val_loss_time.png").write_bytes(b"half")
    live = report_dir / f".report-staging-{os.getppid()}"  # this test's parent: running
    live.mkdir()
    assert report_of(capsys, out, report_dir=report_dir) == (0, "")
    assert not killed.exists() and live.is_dir()
    assert (report_dir / "README.md").read_text().startswith("# Lighthouse + recovery vs dense")


def test_a_comparison_given_as_dot_is_named_after_its_folder(tmp_path, capsys, archived, monkeypatch):
    # Before: Path(".").name is "": a section "## " and PNGs "_val_loss_time.png", ...
    out = copy_to(archived, tmp_path)
    monkeypatch.chdir(out)
    assert report_of(capsys, Path("."), report_dir=tmp_path / "report") == (0, "")
    assert "\n## cmp\n" in (tmp_path / "report" / "README.md").read_text()
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png"))[0] == "cmp_loss_by_position.png"
    with pytest.raises(ValueError, match="have the same folder name 'cmp'"):  # "." and another cmp: their PNGs collide
        report.check_inputs([Path("."), copy_to(archived, tmp_path / "b")], tmp_path / "report")


def test_a_compare_json_without_the_keys_the_report_reads_is_named(tmp_path, capsys, archived):
    # Before: a KeyError traceback ('val_every'), naming neither the file nor what it lacked.
    out = copy_to(archived, tmp_path)
    plan = out / "compare.json"
    kept = {k: v for k, v in report.read_json(plan).items() if k not in ("share", "val_every")}
    plan.write_text(json.dumps(kept))
    code, err = report_of(capsys, out, report_dir=tmp_path / "report")
    assert code == 2 and err == (
        f"compare report: {plan} lacks share, val_every, which the report reads: not the plan of a bench/compare.py "
        "run\n"
    )
    assert not (tmp_path / "report").exists()


def test_a_run_config_without_what_the_report_reads_is_named(tmp_path, capsys, archived):
    # Before: a KeyError traceback ('arch') from the section's set-up line.
    out = copy_to(archived, tmp_path)
    config = next(out.glob("*-seed*")) / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["model"].pop("arch")
    config.write_text(yaml.safe_dump(settings))
    code, err = report_of(capsys, out, report_dir=tmp_path / "report")
    assert code == 2 and err == (
        f"compare report: {config} lacks model.arch.lighthouse, data.seq_len or trainer: not the config of a run\n"
    )
    config.write_text("model: [unclosed\n")
    code, err = report_of(capsys, out, report_dir=tmp_path / "report")
    assert code == 2 and err.startswith(f"compare report: {config} is not valid YAML (") and "Traceback" not in err


# ---- bench/branch.py report ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_archive() -> Path:
    """branch_64k seed 0, the smallest archived seed with D and LH evaluated."""
    return REPO / "bench" / "report" / "runs" / "branch_64k-seed0.tgz"


def branch_report_of(capsys, *runs: Path, report_dir: Path) -> tuple[int, str]:
    """(exit code, stderr) of ``branch.py report``."""
    code = branch.main(["report", "--runs", *map(str, runs), "--report-dir", str(report_dir)])
    return code, capsys.readouterr().err


def test_a_branch_report_that_fails_while_writing_leaves_the_old_one(tmp_path, capsys, seed_archive, monkeypatch):
    # Before: branch_val_loss_tokens.png was replaced, then the run stopped at branch_val_loss_time.png (a folder),
    # README.md left as it was: the old text beside a new plot.
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    old = {name: f"old {name}\n" for name in ("README.md", "branch_val_loss_tokens.png")}
    for name, text in old.items():
        (report_dir / name).write_text(text)
    (report_dir / "branch_val_loss_time.png").mkdir()
    code, err = branch_report_of(capsys, seed_archive, report_dir=report_dir)
    assert code == branch.BAD_FOLDER and err == (
        f"branch report: --report-dir {report_dir}: {report_dir / 'branch_val_loss_time.png'} is a folder where the "
        "report writes a file; nothing was written\n"
    )
    assert {p.name for p in report_dir.iterdir()} == {*old, "branch_val_loss_time.png"}
    assert all((report_dir / name).read_text() == text for name, text in old.items())
    # A failure inside the writing itself (a full disk, say) leaves it as it was too, and a new folder not made.
    import branch_report

    def full_disk(seeds, path, by_time):
        if by_time:
            raise OSError(28, "No space left on device", str(path))
        real(seeds, path, by_time)

    real = branch_report.plot_curves
    monkeypatch.setattr(branch_report, "plot_curves", full_disk)
    (report_dir / "branch_val_loss_time.png").rmdir()
    assert branch_report_of(capsys, seed_archive, report_dir=report_dir)[0] == branch.BAD_FOLDER
    assert {p.name for p in report_dir.iterdir()} == set(old)
    assert all((report_dir / name).read_text() == text for name, text in old.items())
    assert branch_report_of(capsys, seed_archive, report_dir=tmp_path / "new")[0] == branch.BAD_FOLDER
    assert not (tmp_path / "new").exists()
    monkeypatch.setattr(branch_report, "plot_curves", real)
    assert branch_report_of(capsys, seed_archive, report_dir=report_dir) == (0, "")
    assert (report_dir / "README.md").read_text().startswith("# Branch comparison")
    written = {p.name for p in report_dir.iterdir()}
    assert written == {"README.md", "branch_val_loss_tokens.png", "branch_val_loss_time.png"}
