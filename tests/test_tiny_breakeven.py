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
