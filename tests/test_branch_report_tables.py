"""The branch report's loss-by-position and wall-clock tables on hand-made seeds whose numbers are known: gaps are
paired per seed, and a run cut short or a warm-up of another setting is not averaged in."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
from training_helpers import REPO

sys.path.insert(0, str(REPO / "bench"))
import branch_report  # noqa: E402
from branch_seeds import Arm, SeedRun  # noqa: E402

BUCKETS = ["0-256", "256-1k"]
PLAN = {"seed": 0, "warmup": 200, "steps": 800, "switch_step": 500}


def arm(name: str, buckets: list[float] | None, wall: float = 60.0, tokens: float = 1000.0) -> Arm:
    """An arm whose every window has the given per-bucket losses; None: trained, never evaluated (cut short)."""
    window_losses = None
    if buckets is not None:
        window_losses = {
            "split": "val",
            "window_ids": [0, 1],
            "losses": [float(np.mean(buckets))] * 2,
            "buckets": BUCKETS,
            "bucket_losses": [buckets, buckets],
        }
    return Arm(
        name=name,
        curve=[],
        sparse_curve={},
        window_losses=window_losses,
        recall=None,
        lookahead=None,
        wall_s={"dense": wall},
        train_s={"dense": wall / 2},
        tokens_per_s={"dense": tokens},
        jobs=1,
        end=800,
    )


def seed(n: int, arms: dict[str, Arm], deterministic: bool = False, warmup_wall: float = 60.0) -> SeedRun:
    config = {"trainer": {"deterministic": deterministic}, "data": {"seq_len": 8}}
    run = SeedRun(Path(f"seed{n}"), n, {**PLAN, "seed": n}, None, None, config, arm("warmup", None, warmup_wall))
    run.arms = arms
    return run


def test_position_gaps_are_paired_over_the_seeds_with_both_arms():
    # Seed 0 is low in every arm, seed 1 high; only seed 1 has E. Unpaired, LH - E would be 1.1 - 2.05 < 0,
    # though LH is above E by 0.05 in the one seed that has both.
    seeds = [
        seed(0, {"D": arm("D", [1.0, 1.0]), "LH": arm("LH", [1.1, 1.1])}),
        seed(1, {"D": arm("D", [2.0, 2.0]), "LH": arm("LH", [2.1, 2.3]), "E": arm("E", [2.05, 2.05])}),
    ]
    table = branch_report.position_table(seeds)
    assert table[0] == "| positions | D (2) | LH (2) | E (1) | LH - D (2) | LH - E (1) |"
    assert table[2] == "| 0-256 | 1.5000 | 1.6000 | 2.0500 | +0.1000 | +0.0500 |"
    assert table[3] == "| 256-1k | 1.5000 | 1.7000 | 2.0500 | +0.2000 | +0.2500 |"


def test_wall_table_leaves_out_cut_runs_and_splits_the_warmup_by_determinism():
    seeds = [
        seed(0, {"D": arm("D", [1.0, 1.0], wall=120), "E": arm("E", None, wall=30)}),
        seed(1, {"D": arm("D", [1.0, 1.0], wall=240), "E": arm("E", [1.0, 1.0], wall=90)}, warmup_wall=60),
        seed(2, {"D": arm("D", [1.0, 1.0], wall=180)}, deterministic=True, warmup_wall=300),
    ]
    rows = {label: ([s.seed for s in group], runs) for label, group, runs in branch_report.wall_rows(seeds)}
    assert list(rows) == [
        "shared dense warm-up (0-W)",
        "shared dense warm-up (0-W), deterministic",
        "D (dense) (W-end)",
        "E (dense, equal time) (W-end)",
    ]
    assert rows["shared dense warm-up (0-W)"][0] == [0, 1] and rows["shared dense warm-up (0-W), deterministic"][0] == [
        2
    ]
    assert rows["E (dense, equal time) (W-end)"][0] == [1]  # seed 0's E never reached its final evaluation
    table = branch_report.wall_table(seeds)
    assert "| D (dense) (W-end) | 0, 1, 2 | - | 3.00 | 3.00 | 1.0 | - | 1.50 | - | 1000 |" in table
    assert "| E (dense, equal time) (W-end) | 1 | - | 1.50 | 1.50 | 1.0 | - | 0.75 | - | 1000 |" in table
    assert "| shared dense warm-up (0-W), deterministic | 2 | - | 5.00 | 5.00 | 1.0 | - | 2.50 | - | 1000 |" in table
    # What the warm-up's launches resolved decides, not branch.py's config: a `-- --trainer.deterministic false`
    # on one of its calls makes it the fast kind.
    seeds[2].resolved = {
        "warmup/config.yaml": {"trainer": {"deterministic": True}},
        "warmup/config.1.yaml": {"trainer": {"deterministic": False}},
    }
    rows = {label: [s.seed for s in group] for label, group, _ in branch_report.wall_rows(seeds)}
    assert rows["shared dense warm-up (0-W)"] == [0, 1, 2] and "shared dense warm-up (0-W), deterministic" not in rows


def test_runs_on_another_device_than_the_seeds_plan_are_named(tmp_path):
    """A seed spans sessions, and a session's machine can be an H100 where the seed started on an H200: the report's
    set-up line names such runs, read from the launch records (since 2026-12-05) or, before them, from Lightning's
    line in the job's log."""
    from branch_seeds import run_devices

    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
    (old / "launches.jsonl").write_text('{"kind": "fit", "start": 0.0, "end": 1.0, "rc": 0}\n')
    (old / "launch-0.log").write_text("You are using a CUDA device ('NVIDIA H100 80GB HBM3') that has Tensor Cores.\n")
    (new / "launches.jsonl").write_text('{"kind": "fit", "start": 0.0, "end": 1.0, "rc": 0, "device": "NVIDIA H200"}\n')
    assert run_devices(old) == {"NVIDIA H100 80GB HBM3"} and run_devices(new) == {"NVIDIA H200"}

    def on(name: str, *devices: str) -> Arm:
        return dataclasses.replace(arm(name, [1.0, 1.0]), devices=frozenset(devices))

    seeds = [
        seed(n, {"D": on("D", "NVIDIA H200"), "E": on("E", e)})
        for n, e in ((0, "H100"), (1, "H100"), (2, "NVIDIA H200"))
    ]
    for s in seeds:
        s.plan["device"] = "NVIDIA H200"
    runs = [(s, run) for s in seeds for run in s.arms.values()]
    assert branch_report.devices_said(runs) == "device NVIDIA H200 (E of seeds 0, 1 on H100)"
    assert branch_report.devices_said(runs[-2:]) == "device NVIDIA H200"
