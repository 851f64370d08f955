"""bench/tiny_breakeven.py reads the break-even speed-up off tiny_branch.py's records: linear in E's steps between
the measured speed-ups, with R = 1 (E is D) as a point, and says so where the records do not bracket it."""

import json
import subprocess
import sys

import pytest
from training_helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import tiny_breakeven  # noqa: E402

RECORDS = REPO / "bench" / "report" / "tiny_branch"


def record(gap: float, equal_time: dict[float, float], steps=400, warmup=100, switch=250) -> dict:
    arm = {"switch": switch, "gap": gap, "equal_time": [{"speedup": r, "lh_minus_e": g} for r, g in equal_time.items()]}
    return {"results": [{"steps": steps, "seed": 3, "warmup": warmup, "arms": [arm]}]}


def test_the_crossing_is_linear_in_the_equal_time_arms_steps():
    # W=100, switch 250, S=400: E has 150/R + 150 steps after W, 300 at R=1 and 225 at R=2. LH - E is +0.1 and -0.1
    # there, so it is 0 at 262.5 steps, whose Lighthouse part 112.5 is 150 / R: R = 4/3.
    (found,) = tiny_breakeven.break_evens(record(0.1, {2.0: -0.1}))
    assert found.speedup == pytest.approx(4 / 3)
    assert (found.steps, found.seed, found.switch) == (400, 3, 250)
    assert found.cell() == "1.3x" and found.worth() == "0.75"


def test_the_first_crossing_from_no_speed_up_is_taken():
    # Between R=3 (+0.02) and R=4.5 (-0.01); the later sign change back (R=8, +0.01) is noise past the break-even.
    (found,) = tiny_breakeven.break_evens(record(0.1, {3.0: 0.02, 4.5: -0.01, 8.0: 0.01}))
    steps = {r: 150 / r + 150 for r in (3.0, 4.5)}
    crossing = steps[4.5] + (steps[3.0] - steps[4.5]) * 0.01 / 0.03
    assert found.speedup == pytest.approx(150 / (crossing - 150))
    assert 3.0 < found.speedup < 4.5


def test_unbracketed_break_evens_say_which_side_they_are_on():
    (beyond,) = tiny_breakeven.break_evens(record(0.07, {3.0: 0.03, 8.0: 0.002}))
    assert beyond.speedup is None and beyond.cell() == "> 8x" and beyond.worth() == "< 0.12"
    (none_needed,) = tiny_breakeven.break_evens(record(-0.02, {2.3: -0.05}))
    assert none_needed.speedup is None and none_needed.cell() == "<= 1x" and none_needed.worth() == ">= 1"


def test_lighthouse_ahead_at_no_speed_up_is_not_overturned_by_a_noisy_point_at_a_larger_one():
    # LH - D < 0: Lighthouse leads at equal steps. LH - E > 0 at 2.3x (E has fewer steps than D: noise) must not make
    # the sign change from 2.3x to 3x a break-even.
    (ahead,) = tiny_breakeven.break_evens(record(-0.01, {2.3: 0.01, 3.0: -0.02}))
    assert (ahead.speedup, ahead.cell(), ahead.worth()) == (None, "<= 1x", ">= 1")
    (level,) = tiny_breakeven.break_evens(record(0.0, {2.3: 0.01, 3.0: 0.02}))  # level at R = 1 is no speed-up needed
    assert (level.speedup, level.cell()) == (None, "<= 1x")


def breakeven_command(*paths) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "tiny_breakeven.py"), *map(str, paths)], capture_output=True, text=True
    )


@pytest.mark.parametrize("field", ["lh_minus_e", "speedup"])
@pytest.mark.parametrize("value", [float("nan"), float("-inf"), float("inf")], ids=["nan", "-inf", "inf"])
def test_a_non_finite_number_is_refused_naming_the_file_and_the_field(field, value, tmp_path):
    """Unchecked, a NaN LH - E at R = 3 read as '> 8x' (the record gives 2.4x) and -inf as 'nanx'."""
    damaged = json.loads((RECORDS / "breakeven_s800_seed0.json").read_text())
    damaged["results"][0]["arms"][0]["equal_time"][1][field] = value
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(damaged))
    done = breakeven_command(path)
    where = "equal_time[1].lh_minus_e (R = 3)" if field == "lh_minus_e" else "equal_time[1].speedup"
    valid = "a finite number" if field == "lh_minus_e" else "a finite number >= 1"
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"tiny_breakeven: {path}: results[0].arms[0].{where} is {value!r}; valid: {valid}\n"


def test_a_non_finite_difference_at_equal_steps_is_refused():
    with pytest.raises(tiny_breakeven.BadValue, match=r"^results\[0\]\.arms\[0\]\.gap is nan; valid: a finite number$"):
        tiny_breakeven.break_evens(record(float("nan"), {2.0: -0.1}))


def test_rows_that_share_s_seed_and_switch_say_what_tells_them_apart():
    """Three records of S=800, seed 0, switch 500: the break-even design (W=200) with four E's, the offset run (W=200)
    with one, and width 32 from step 0; without W, width and file they read as three rows of '| 800 | 0 | 500 |'."""
    names = ["breakeven_s800_seed0.json", "offset_s800_branch_seed0.json", "width32_scratch_s800_seed0.json"]
    done = breakeven_command(*(RECORDS / name for name in names))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "| S | W | width | seed | switch | break-even R | a Lighthouse step in dense steps | record |",
        "|---|---|---|---|---|---|---|---|",
        f"| 800 | 0 | 32 | 0 | 500 | 1.6x | 0.62 | {RECORDS / names[2]} |",
        f"| 800 | 200 | 64 | 0 | 500 | 2.4x | 0.41 | {RECORDS / names[0]} |",
        f"| 800 | 200 | 64 | 0 | 500 | > 2.3x | < 0.43 | {RECORDS / names[1]} |",
    ]


def test_a_file_named_twice_gives_its_rows_once(monkeypatch):
    monkeypatch.chdir(REPO)
    relative = RECORDS.relative_to(REPO) / "breakeven_s400_seed0.json"
    done = breakeven_command(relative, REPO / relative, f"bench/report/../report/tiny_branch/{relative.name}")
    assert done.returncode == 0
    assert done.stdout.splitlines()[2:] == [f"| 400 | 100 | 64 | 0 | 250 | 2.0x | 0.51 | {relative} |"]


def test_records_without_an_equal_time_list_give_no_rows():
    old = {"results": [{"steps": 600, "seed": 0, "warmup": 150, "arms": [{"switch": 375, "gap": 0.1, "E": 1.9}]}]}
    assert tiny_breakeven.break_evens(old) == []


def test_a_cut_off_run_gives_no_row_until_it_is_complete():
    """tiny_branch.py saves a run after each arm, marked partial; a break-even from the E's done so far would move."""
    cut_off = record(0.1, {2.0: 0.05})
    cut_off["results"][0]["partial"] = True
    assert tiny_breakeven.break_evens(cut_off) == []
    del cut_off["results"][0]["partial"]
    assert len(tiny_breakeven.break_evens(cut_off)) == 1


def test_the_archived_records_give_the_break_evens_the_docs_quote():
    """bench/RESULTS.md and the README quote these (thirteenth session); the records are committed."""
    files = sorted(RECORDS.glob("breakeven_s*_seed*.json"))
    rows = [row for path in files for row in tiny_breakeven.break_evens(json.loads(path.read_text()))]
    cells = {(row.steps, row.seed): row.cell() for row in rows}
    assert cells == {
        (400, 0): "2.0x",
        (400, 1): "1.5x",
        (600, 0): "2.9x",
        (600, 1): "2.9x",
        (800, 0): "2.4x",
        (800, 1): "2.6x",
        (1200, 0): "3.7x",
        (1200, 1): "3.4x",
        (2400, 0): "> 8x",
        (2400, 1): "> 8x",
    }


def test_the_command_names_a_file_that_is_not_a_record_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tiny_breakeven.py"), str(bad)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{bad}: not a tiny_branch.py record" in done.stderr
    empty = tmp_path / "old.json"
    empty.write_text(json.dumps({"results": [{"steps": 600, "seed": 0, "warmup": 150, "arms": [{"switch": 375}]}]}))
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tiny_breakeven.py"), str(empty)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "no list of equal-time arms" in done.stderr and "Traceback" not in done.stderr


def test_the_width_records_give_the_deficits_and_break_evens_the_docs_quote():
    """The fifteenth session's width sweep (S=600, W=150, switch 375; width 64 is the break-even run at S=600):
    bench/RESULTS.md and docs/comparison.md quote these; the records are committed."""
    files = {
        32: ["width32_s600.json"],
        64: ["breakeven_s600_seed0.json", "breakeven_s600_seed1.json"],
        128: ["width128_s600_seed0.json", "width128_s600_seed1.json"],
    }
    found = {}
    for width, names in files.items():
        for name in names:
            record = json.loads((RECORDS / name).read_text())
            assert record["args"].get("dim", 64) == width
            for result in record["results"]:
                (arm,) = result["arms"]
                (row,) = tiny_breakeven.break_evens({"results": [result]})
                at_23 = next(e["lh_minus_e"] for e in arm["equal_time"] if e["speedup"] == 2.3)
                found[width, result["seed"]] = (round(arm["gap"], 3), round(at_23, 3), row.cell())
    assert found == {
        (32, 0): (0.082, -0.009, "2.0x"),
        (32, 1): (0.078, -0.020, "1.8x"),
        (64, 0): (0.124, 0.019, "2.9x"),
        (64, 1): (0.139, 0.021, "2.9x"),
        (128, 0): (0.177, 0.086, "> 4.5x"),
        (128, 1): (0.167, 0.063, "> 4.5x"),
    }
    # Width 32 over 1200 steps (seed 1: the sixteenth session): LH - D, then LH - E at 2.3x and 4.5x.
    for seed, gap, lh_minus_e in ((0, 0.093, [0.053, 0.026]), (1, 0.095, [0.038, 0.003])):
        (longer,) = json.loads((RECORDS / f"width32_s1200_seed{seed}.json").read_text())["results"]
        (row,) = tiny_breakeven.break_evens({"results": [longer]})
        (arm,) = longer["arms"]
        assert (longer["steps"], longer["seed"], round(arm["gap"], 3), row.cell()) == (1200, seed, gap, "> 4.5x")
        assert [round(e["lh_minus_e"], 3) for e in arm["equal_time"]] == lh_minus_e
    (half_lr,) = json.loads((RECORDS / "width128_lr1.5e-3_s600_seed0.json").read_text())["results"]
    assert (round(half_lr["D"], 4), round(half_lr["arms"][0]["gap"], 3)) == (1.5572, 0.198)


def test_the_from_step_0_records_give_the_offsets_and_gaps_the_docs_quote():
    """From step 0 (S=800, switch 500, E at 2.3x: 517 steps), widths 64 (fourteenth session), 32 and 128 (seventeenth):
    LH - D, E's offset from D at E's last step, LH - E, and LH against D at that step. bench/RESULTS.md and
    docs/comparison.md quote these; the records are committed."""
    files = {
        (32, 0): "width32_scratch_s800_seed0.json",
        (32, 1): "width32_scratch_s800_seed1.json",
        (64, 0): "offset_s800_scratch_seed0.json",
        (64, 1): "offset_s800_scratch_seed1.json",
        (128, 0): "width128_scratch_s800_seed0.json",
        (128, 1): "width128_scratch_s800_seed1.json",
    }
    found = {}
    for (width, seed), name in files.items():
        record = json.loads((RECORDS / name).read_text())
        (result,) = record["results"]
        (arm,) = result["arms"]
        (equal,) = arm["equal_time"]
        assert (record["args"].get("dim", 64), result["seed"], result["warmup"], equal["e_end"]) == (
            width,
            seed,
            0,
            517,
        )
        assert "partial" not in result
        offset = equal["E"] - equal["d_at_e_end"]
        lh_at_e_end = arm["LH"] - equal["d_at_e_end"]
        found[width, seed] = tuple(round(x, 3) for x in (arm["gap"], offset, equal["lh_minus_e"], lh_at_e_end))
    assert found == {
        (32, 0): (0.156, 0.143, -0.073, 0.069),
        (32, 1): (0.216, 0.115, 0.011, 0.126),
        (64, 0): (0.215, 0.093, -0.018, 0.075),
        (64, 1): (0.133, 0.069, -0.060, 0.009),
        (128, 0): (0.297, 0.114, 0.032, 0.146),
        (128, 1): (0.400, 0.124, 0.153, 0.277),
    }
