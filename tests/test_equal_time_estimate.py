"""bench/equal_time_estimate.py: E's end by branch.py's equal-time rule, D's curve interpolated and moved to the final
windows, leave-one-out calibration, and the committed 65536 estimate that bench/RESULTS.md quotes."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from training_helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import equal_time_estimate as estimate  # noqa: E402
from branch_seeds import Arm, SeedRun, load_seeds  # noqa: E402

RUNS = REPO / "bench" / "report" / "runs"
TOOL = [sys.executable, str(REPO / "bench" / "equal_time_estimate.py")]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


def arm(name: str, curve: dict[int, float], final: float | None, train_s: dict[str, float], end: int) -> Arm:
    return Arm(
        name=name,
        curve=[(s, float(s), v) for s, v in sorted(curve.items())],
        sparse_curve={},
        window_losses=None if final is None else {"losses": [final]},
        recall=None,
        lookahead=None,
        wall_s={},
        train_s=train_s,
        tokens_per_s={},
        jobs=1,
        end=end,
    )


def seed(name: str, d_curve: dict[int, float], d_final: float, lh_final: float, e_final=None, e_end=None) -> SeedRun:
    # W=100, S=300: D's 200 dense steps take 1 s each; LH's 100 Lighthouse steps 0.4 s and 100 dense steps 1 s.
    plan = {"seed": 0, "warmup": 100, "steps": 300, "switch_step": 200, "config": f"configs/{name}.yaml"}
    run = SeedRun(Path(name), 0, plan, None, None if e_end is None else {"e_end": e_end}, {}, None)
    run.arms["D"] = arm("D", d_curve, d_final, {"dense": 200.0}, 300)
    run.arms["LH"] = arm("LH", {}, lh_final, {"lighthouse": 40.0, "dense": 100.0}, 300)
    if e_final is not None:
        run.arms["E"] = arm("E", {}, e_final, {"dense": 140.0}, e_end)
    return run


D_CURVE = {200: 2.0, 250: 1.8, 300: 1.6}  # validation; the final windows score 0.05 lower at 300


def test_e_ends_after_lh_s_training_time_in_d_s_dense_steps():
    # LH trained 40 + 100 s; D's dense step is 200 s / 200 steps: E has 140 steps after W=100.
    assert estimate.equal_time_end(seed("a", D_CURVE, 1.55, 1.7)) == 240
    untimed = seed("a", D_CURVE, 1.55, 1.7)
    untimed.arms["D"] = arm("D", D_CURVE, 1.55, {}, 300)  # no ThroughputRecorder records
    with pytest.raises(ValueError, match="a: D or LH has no throughput records"):
        estimate.equal_time_end(untimed)


def test_d_is_interpolated_between_validations_and_moved_to_the_final_windows():
    run = seed("a", D_CURVE, 1.55, 1.7)
    assert estimate.d_final_at(run, 240) == pytest.approx(1.84 - 0.05)
    assert estimate.d_final_at(run, 250) == pytest.approx(1.75)  # on a validation
    with pytest.raises(ValueError, match=r"a: step 320 lies outside D's validated steps 200-300"):
        estimate.d_final_at(run, 320)
    with pytest.raises(ValueError, match="b: D has no validation at its last step 300"):
        estimate.d_final_at(seed("b", {200: 2.0, 250: 1.8}, 1.55, 1.7), 240)


def test_a_calibration_seed_is_estimated_from_the_other_seeds_offsets_only():
    # Offsets E - D at E's end (240, D there 1.79): +0.03 for "a", +0.01 for "b".
    a = seed("a", D_CURVE, 1.55, 1.90, e_final=1.82, e_end=240)
    b = seed("b", D_CURVE, 1.55, 1.80, e_final=1.80, e_end=240)
    offsets = estimate.calibration_offsets([a, b])
    assert offsets == pytest.approx({"a-seed0": 0.03, "b-seed0": 0.01})  # seeds named by their plan, as branch.py
    rows = {r.name: r for r in estimate.estimates([a, b, seed("c", D_CURVE, 1.55, 1.85)], offsets)}
    assert rows["a-seed0"].offsets == pytest.approx((0.01,)) and rows["a-seed0"].e_measured == pytest.approx(1.82)
    assert rows["a-seed0"].lh_minus_e(0.01) == pytest.approx(1.90 - 1.80)
    assert sorted(rows["c-seed0"].offsets) == pytest.approx([0.01, 0.03]) and rows["c-seed0"].e_measured is None
    # One calibration seed cannot estimate itself: no row for it, whatever its folder is called.
    assert estimate.estimates([a], estimate.calibration_offsets([a])) == []
    renamed = seed("a", D_CURVE, 1.55, 1.90, e_final=1.82, e_end=240)
    renamed.folder = Path("/elsewhere/a-copy")
    assert estimate.estimates([renamed], estimate.calibration_offsets([a])) == []


def estimate_table(runs: str, *extra: str, calibration: str = "branch_32k-seed*.tgz") -> str:
    calibrating = sorted(map(str, RUNS.glob(calibration)))
    runs = sorted(map(str, RUNS.glob(runs)))
    return subprocess.run(
        [*TOOL, "--calibration", *calibrating, "--runs", *runs, *extra],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout


def results_md() -> str:
    return " ".join((REPO / "bench" / "RESULTS.md").read_text().split())  # the prose is wrapped


def test_the_committed_estimate_from_step_0_is_the_one_results_md_quotes():
    # Calibrated after a warm-up, as in the fourteenth session (since refused without --across-designs).
    said = estimate_table("branch_32k-scratch-seed*.tgz", "--across-designs")
    rows = [line.split(" | ") for line in said.splitlines() if line.startswith("| branch_32k-scratch-seed")]
    assert [(r[0], r[1], r[5]) for r in rows] == [
        ("| branch_32k-scratch-seed0", "525", "-0.0929"),
        ("| branch_32k-scratch-seed1", "523", "-0.0693"),
        ("| branch_32k-scratch-seed2", "529", "-0.1064"),
    ]
    assert "**LH - E ~ -0.093 / -0.069 / -0.106** (-0.115 to -0.060 over seeds and offsets;" in results_md()
    # E measured from step 0 (seeds 0 and 1, twentieth session): what RESULTS.md reports against the estimate.
    assert [(r[0], r[7], r[8]) for r in rows] == [
        ("| branch_32k-scratch-seed0", "1.6675", "-0.2459 |"),
        ("| branch_32k-scratch-seed1", "1.7427", "-0.2689 |"),
        ("| branch_32k-scratch-seed2", "-", "- |"),
    ]
    assert "**LH - E = -0.2459 / -0.2689** (seeds 0 / 1;" in results_md()


def test_the_committed_estimate_at_65536_and_its_check_are_what_results_md_quotes(tmp_path):
    calibration = sorted(RUNS.glob("branch_32k-seed*.tgz"))
    seeds = load_seeds(calibration, tmp_path / "c")
    # The rule is branch.py's: it gives every recorded E length back, E of seed 0 too (trained, not evaluated).
    recorded = {s.folder.name: s.equal_time["e_end"] for s in seeds if s.equal_time and "LH" in s.arms}
    assert recorded == {f"branch_32k-seed{n}": end for n, end in ((0, 633), (2, 631), (3, 632), (4, 632))}
    assert {name: estimate.equal_time_end(s) for s in seeds if (name := s.folder.name) in recorded} == recorded
    said = estimate_table("branch_64k-seed*.tgz")
    assert "| branch_64k-seed0 | 536 | 1.6361 | 1.6698 | 1.7572 | +0.0874 | +0.0788 to +0.0970 | - | - |" in said
    assert "**LH - E ~ +0.087** (+0.079 to +0.097 over the three offsets)" in results_md()
    assert "| branch_64k-seed1 | 540 | 1.7147 | 1.7484 | 1.8162 | +0.0678 | +0.0591 to +0.0774 | - | - |" in said
    assert "**LH - E ~ +0.068** (+0.059 to +0.077; seed 0 +0.087)" in results_md()
    # The check on the seeds where E was measured: each estimated from the other two seeds' offsets.
    checked = {
        line.split(" | ")[0][2:]: line.split(" | ")[5]
        for line in estimate_table("branch_32k-seed*.tgz").splitlines()
        if line.startswith("| branch_32k-seed") and not line.endswith("| - | - |")
    }
    assert checked == {"branch_32k-seed2": "+0.1335", "branch_32k-seed3": "+0.0765", "branch_32k-seed4": "+0.1222"}
    assert "+0.1335 / +0.0765 / +0.1222 against the measured +0.1205 / +0.0908 / +0.1209" in results_md()


def test_designs_are_not_mixed_unless_asked_and_step_0_calibrates_step_0():
    calibration = sorted(map(str, RUNS.glob("branch_32k-seed*.tgz")))
    scratch = sorted(map(str, RUNS.glob("branch_32k-scratch-seed*.tgz")))
    said = subprocess.run(
        [*TOOL, "--calibration", *calibration, "--runs", *scratch], capture_output=True, text=True, env=ENV
    )
    assert said.returncode == 1 and said.stdout == "" and "Traceback" not in said.stderr
    assert said.stderr.startswith(
        "equal_time_estimate: the --calibration seeds run after a dense warm-up and the --runs seeds from step 0;"
    )
    # From step 0 on its own E arms: seed 2's estimate, the prediction RESULTS.md states before its E is measured.
    table = estimate_table("branch_32k-scratch-seed*.tgz", calibration="branch_32k-scratch-seed*.tgz")
    assert "branch_32k-scratch-seed0 +0.1867, branch_32k-scratch-seed1 +0.2332; mean +0.2100" in table
    assert (
        "| branch_32k-scratch-seed2 | 529 | 1.5158 | 1.7258 | 1.4431 | -0.2826 | -0.3059 to -0.2594 | - | - |" in table
    )
    assert "seed 2's E is predicted at 1.726, **LH - E ~ -0.283** (-0.306 to -0.259)" in results_md()


def test_bad_archives_get_one_line_and_no_traceback(tmp_path):
    broken = tmp_path / "broken.tgz"
    broken.write_text("not a tar file")
    said = subprocess.run(
        [*TOOL, "--calibration", str(broken), "--runs", str(broken)], capture_output=True, text=True, env=ENV
    )
    assert said.returncode == 1 and "Traceback" not in said.stderr
    assert said.stderr == (
        f"equal_time_estimate: ValueError: {broken} is not a readable .tgz (ReadError: file could not be opened "
        "successfully): damaged, or not one\n"
    )
    # A seed folder without LH and E: nothing to calibrate on.
    with tarfile.open(RUNS / "branch_64k-seed0.tgz") as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "branch_64k-seed0"
    shutil.rmtree(folder / "LH")
    said = subprocess.run(
        [*TOOL, "--calibration", str(folder), "--runs", str(folder)], capture_output=True, text=True, env=ENV
    )
    assert said.returncode == 1 and "Traceback" not in said.stderr
    assert "no --calibration seed has D and E with their final evaluations" in said.stderr
