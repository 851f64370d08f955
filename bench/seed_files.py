"""What the branch report reads from a seed folder, checked before any table uses it: each JSON file has the fields
the report reads, of the types it reads them as, and the records agree with the runs they describe (the step a
final evaluation scored, the plan's seed and steps against the configs the runs resolved). A damaged or
hand-edited file is refused in one line naming it; before these checks some ended in a traceback deep in a table,
others changed a reported number without a word (bench/branch_seeds.py's load_seeds calls ``check_seed_files``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from branch import ARMS, RUNS, SPARSE_ARMS, end_step

from lighthouse.eval.recall import METRICS as RECALL_METRICS
from lighthouse.eval.run_logs import read_json_lines

if TYPE_CHECKING:
    from branch_seeds import SeedRun

NUMBER = (int, float)
# What lookahead_table prints; the single-position fields (cut_*) only since 2026-12-02, so checked where present.
LOOKAHEAD = {
    **dict.fromkeys(("first_half_real", "first_half_replaced", "difference", "standard_error"), NUMBER),
    **dict.fromkeys(("lighthouse_loss", "dense_loss"), NUMBER),
    "windows": int,
}
LOOKAHEAD_CUT = dict.fromkeys(("cut_real", "cut_replaced", "cut_difference", "cut_standard_error"), NUMBER)
EQUAL_TIME = {"rule": str, "lh_time_s": NUMBER, "d_dense_step_s": NUMBER, "e_steps": int, "e_end": int}
WARMUP_CHECK = {"early_loss": NUMBER, "late_loss": NUMBER}  # when "drop" is a verdict, not None


def is_a(value: object, kind: type | tuple[type, ...]) -> bool:
    """isinstance, except that a bool is no number (JSON true would pass for 1)."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def require(path: Path, data: object, fields: dict) -> None:
    """Refuse ``data`` (read from ``path``) unless it is an object holding ``fields`` of their types."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object: damaged")
    missing = [k for k in fields if k not in data]
    wrong = [k for k, kind in fields.items() if k in data and not is_a(data[k], kind)]
    if missing or wrong:
        said = ([f"no {', '.join(missing)}"] if missing else []) + ([f"a bad {', '.join(wrong)}"] if wrong else [])
        raise ValueError(f"{path} has {' and '.join(said)}: damaged, or written by another version")


def check_window_losses(path: Path, data: object, end: int) -> None:
    """The final evaluation: windows scored once each, a finite loss per window and per position bucket, at the
    arm's last step (a file from another step would be reported as the arm's final loss)."""
    fields = {"step": int, "split": (dict, str), "window_ids": list, "losses": list, "buckets": list}
    require(path, data, {**fields, "bucket_losses": list})
    ids, losses, buckets, rows = data["window_ids"], data["losses"], data["buckets"], data["bucket_losses"]
    if not ids:
        raise ValueError(f"{path} scored no window: damaged")
    if data["step"] != end:
        raise ValueError(f"{path} scored step {data['step']}, not the run's last step {end}: not its final evaluation")
    if not all(is_a(i, int) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: window_ids must be distinct integers: damaged")
    if len(losses) != len(ids) or len(rows) != len(ids):
        raise ValueError(f"{path}: {len(ids)} windows but {len(losses)} losses and {len(rows)} bucket rows: damaged")
    if not all(is_a(b, str) for b in buckets) or not all(isinstance(r, list) and len(r) == len(buckets) for r in rows):
        raise ValueError(f"{path}: each bucket row must hold one loss per bucket of {buckets}: damaged")
    values = [*losses, *(x for r in rows for x in r)]
    if not all(is_a(x, NUMBER) and math.isfinite(x) for x in values):
        raise ValueError(f"{path}: every loss must be a finite number: damaged")


def check_recall(path: Path, data: object) -> None:
    require(path, data, {"bins": dict})
    for metrics in data["bins"].values():  # None: no query fell in the bin (since 2026-12-05)
        require(path, metrics, dict.fromkeys(RECALL_METRICS, (*NUMBER, type(None))))


def check_lookahead(path: Path, data: object) -> None:
    require(path, data, LOOKAHEAD)
    if "cut_difference" in data:
        require(path, data, LOOKAHEAD_CUT)


def check_records(run_dir: Path) -> None:
    """launches.jsonl (the jobs' spans) and throughput.jsonl (the step times every time column rests on)."""
    for record in read_json_lines(run_dir / "launches.jsonl"):
        require(run_dir / "launches.jsonl", record, {"kind": str, "start": NUMBER, "end": NUMBER})
    for record in read_json_lines(run_dir / "throughput.jsonl"):
        require(run_dir / "throughput.jsonl", record, {"step": int, "step_time_s": NUMBER, "tokens_per_sec": NUMBER})
        if not all(math.isfinite(record[k]) and record[k] > 0 for k in ("step_time_s", "tokens_per_sec")):
            raise ValueError(
                f"{run_dir / 'throughput.jsonl'}: step {record['step']} has a step time or speed <= 0 or not finite: "
                "damaged"
            )


def check_plan_against_runs(seed: SeedRun) -> None:
    """plan.json and equal_time.json say what the report assumes the runs did (the seed, each run's last step, the
    switch); each launch's resolved config says what they did."""
    plan = seed.plan
    for where, config in seed.resolved.items():
        run, path = where.split("/")[0], seed.folder / where
        if config.get("seed_everything") not in (None, plan["seed"]):
            raise ValueError(f"{path} trained seed {config['seed_everything']}, plan.json says seed {plan['seed']}")
        end = end_step(run, plan, seed.equal_time)
        max_steps = (config.get("trainer") or {}).get("max_steps")
        if end is not None and max_steps is not None and max_steps != end:
            raise ValueError(
                f"{path} trained to step {max_steps}, the plan's end of {run} is {end} (plan.json or "
                "equal_time.json): they do not describe this run"
            )
        schedule = (config.get("stage") or {}).get("schedule") or []
        dense_from = [e.get("start") for e in schedule if isinstance(e, dict) and e.get("attention") == "sdpa"]
        if run in SPARSE_ARMS and dense_from and dense_from[-1] != plan["switch_step"]:
            raise ValueError(f"{path} switches to dense at step {dense_from[-1]}, plan.json at {plan['switch_step']}")


def check_seed_files(seed: SeedRun) -> None:
    """Every file of ``seed`` the report reads (module docstring); refused naming the first bad one."""
    folder = seed.folder
    check_plan_against_runs(seed)
    for run in RUNS:
        if (folder / run).is_dir():
            check_records(folder / run)
    for name in ARMS:
        final = folder / name / "final"
        if (final / "window_losses.json").exists() and name not in seed.arms:
            why = (
                "equal_time.json has no e_end"
                if name == "E" and not (seed.equal_time or {}).get("e_end")
                else "no event files with its training loss"
            )
            raise ValueError(f"{folder / name} has a final evaluation but {why}: damaged (it would be left out)")
    for name, arm in seed.arms.items():
        final = folder / name / "final"
        if arm.window_losses is not None:
            check_window_losses(final / "window_losses.json", arm.window_losses, arm.end)
            # A finished arm's time is its phases' steps at their steady-state step times: a phase without records
            # would drop out of its row's mean, and out of E's length (LH's dense phase alone moved E's end 301 steps).
            phases = ("lighthouse", "dense") if name in SPARSE_ARMS else ("dense",)
            if lacking := [ph for ph in phases if ph not in arm.train_s]:
                raise ValueError(
                    f"{folder / name / 'throughput.jsonl'} has no steady-state records of its {' and '.join(lacking)} "
                    "phase: damaged, or cut short"
                )
        if (final / "recall.json").exists():
            check_recall(final / "recall.json", arm.recall)
        if arm.lookahead is not None:
            check_lookahead(final / "lookahead.json", arm.lookahead)
    if seed.equal_time is not None:
        require(folder / "equal_time.json", seed.equal_time, EQUAL_TIME)
    if seed.warmup_check is not None and seed.warmup_check.get("drop") is not None:
        require(folder / "warmup_check.json", seed.warmup_check, {**WARMUP_CHECK, "drop": bool})
