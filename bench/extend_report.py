"""Table of the context-extension pilot (bench/extend_pilot.sh): loss by position and tokens/s per phase.

    python bench/extend_report.py logs/extend_pilot/logs

Reads the newest finished run directory of each name: before (the imported model validated at 65536,
un-extended), lighthouse (Lighthouse N steps + dense recovery M in one job) and dense (N + M dense steps). Losses are
the dense ones (``val/loss_dense_pos`` where the run logged them, else ``val/loss_pos``), every bucket of a column from
one validation: the run's last one that logged every bucket, and for the Lighthouse run also its last such one of
stage 1 (the switch). The ``step`` row says which.

A run folder that did not finish (killed, or cut by the part's time limit and not yet resumed) is skipped with a
note naming it, and the newest finished one of that name is used: its last validation is not the run's end, so its
numbers would stand in the "end" columns for a model that never got there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import NoReturn

from lighthouse.eval.positions import bucket_start
from lighthouse.eval.run_logs import Run, find_runs, read_run

NAMES = ("before", "lighthouse", "dense")
VALIDATE_ONLY = ("before",)  # `train.py validate` launches: no max_steps to reach, one validation at step 0
# The dense loss by position first: a Lighthouse run's val/loss_pos reads its sparse layers, not the model's loss.
POSITION_PREFIXES = ("val/loss_dense_pos/", "val/loss_pos/")
EXPECTED = "the pilot's logs folder ($PILOT/logs) holding run folders under before/, lighthouse/ or dense/"

Column = tuple[str, int, dict[str, float]]  # (header, step, {position bucket: loss})


def refuse(message: str) -> NoReturn:
    """One line on stderr and exit code 2, the project's answer to bad input (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def loss_tags(run: Run) -> dict[str, str]:
    """{position bucket: tag} of the run's loss by position, all from one family (see POSITION_PREFIXES)."""
    for prefix in POSITION_PREFIXES:
        tags = {tag[len(prefix) :]: tag for tag in run.scalars if tag.startswith(prefix)}
        if tags:
            return tags
    return {}


def common_steps(run: Run) -> list[int]:
    """The validation steps at which every position bucket was logged, in order. A validation cut off while it was
    written (a killed job) logs only some buckets; a column built from such a step would mix steps."""
    steps = [set(run.series(tag).steps) for tag in loss_tags(run).values()]
    return sorted(set.intersection(*steps)) if steps else []


def losses_at(run: Run, step: int) -> dict[str, float]:
    """{position bucket: dense loss} at ``step``, one of ``common_steps(run)``."""
    return {bucket: run.series(tag).as_dict()[step] for bucket, tag in loss_tags(run).items()}


def configured_max_steps(run: Run) -> int | None:
    """``trainer.max_steps`` of the run's last launch (a resume may have changed it), None where it sets none."""
    config = run.configs[-1] if run.configs else None
    trainer = config.get("trainer") if isinstance(config, dict) else None
    max_steps = trainer.get("max_steps") if isinstance(trainer, dict) else None
    return max_steps if isinstance(max_steps, int) and max_steps > 0 else None


def unfinished_reason(run: Run, name: str) -> str | None:
    """Why ``run`` did not finish, or None when it did. Training writes no end marker, so a fit is finished when it
    validated every bucket at its configured last step (the pilot validates there: extend_pilot.sh's gcd interval);
    a validate launch is finished once it logged one validation of every bucket."""
    steps = common_steps(run)
    if not steps:
        return "no validation of every position bucket"
    if name in VALIDATE_ONLY:
        return None
    max_steps = configured_max_steps(run)
    if max_steps is None:
        return "no config.yaml with trainer.max_steps, so its end is unknown"
    if steps[-1] < max_steps:
        return f"last full validation at step {steps[-1]} of trainer.max_steps {max_steps}"
    return None


def read_run_folder(folder: Path) -> Run:
    try:
        return read_run(folder)
    except (ValueError, OSError) as err:  # a damaged throughput.jsonl or an unreadable file: the message names it
        refuse(f"{folder}: {err}")


def newest_finished(root: Path, name: str) -> tuple[Run | None, list[tuple[str, str]]]:
    """The newest finished run of ``name`` under ``root`` (None if there is none) and the newer unfinished ones it
    passed over, as (label, why unfinished)."""
    folders = find_runs(root / name) if (root / name).is_dir() else []
    skipped = []
    for folder in reversed(folders):
        run = read_run_folder(folder)
        reason = unfinished_reason(run, name)
        if reason is None:
            return run, skipped
        skipped.append((run.label, reason))
    return None, skipped


def skip_note(label: str, reason: str, shown: Run | None) -> str:
    instead = f"the table shows {shown.label}" if shown is not None else "no finished run of its name is shown"
    return f"note: skipped {label}, unfinished ({reason}); {instead}"


def table_columns(runs: dict[str, Run | None]) -> list[Column]:
    columns = []
    before, lighthouse, dense = (runs[name] for name in NAMES)
    if before is not None:
        step = common_steps(before)[-1]
        columns.append(("imported, un-extended", step, losses_at(before, step)))
    if lighthouse is not None:
        switch = lighthouse.stage_switch_step()
        stage1 = [s for s in common_steps(lighthouse) if switch is None or s <= switch]
        if stage1:
            columns.append((f"Lighthouse, step {stage1[-1]}", stage1[-1], losses_at(lighthouse, stage1[-1])))
        end = common_steps(lighthouse)[-1]
        columns.append(("Lighthouse + recovery, end", end, losses_at(lighthouse, end)))
    if dense is not None:
        end = common_steps(dense)[-1]
        columns.append(("dense extension, end", end, losses_at(dense, end)))
    return columns


def print_table(columns: list[Column]) -> None:
    buckets = sorted({bucket for _, _, losses in columns for bucket in losses}, key=bucket_start)
    print("| positions | " + " | ".join(header for header, _, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    print("| step | " + " | ".join(str(step) for _, step, _ in columns) + " |")
    for bucket in buckets:
        cells = [losses.get(bucket) for _, _, losses in columns]
        print(f"| {bucket} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")


def tokens_per_sec(run: Run, stage: int) -> float | None:
    values = [r["tokens_per_sec"] for r in run.throughput if r.get("stage", 1) == stage and r.get("tokens_per_sec")]
    return statistics.median(values) if values else None


def print_throughput(runs: dict[str, Run | None]) -> None:
    for name, stage in (("lighthouse", 1), ("lighthouse", 2), ("dense", 1)):
        run = runs[name]
        tps = None if run is None else tokens_per_sec(run, stage)
        if tps is not None:
            phase = {("lighthouse", 1): "Lighthouse", ("lighthouse", 2): "recovery (dense)"}.get((name, stage), "dense")
            print(f"tokens/s, {phase}: {tps:,.0f} (median over the throughput windows)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", type=Path, help="the pilot's logs folder ($PILOT/logs)")
    root = p.parse_args(argv).logs
    if not root.is_dir():
        refuse(f"{root} is not a folder: give {EXPECTED}")
    runs, notes = {}, []
    for name in NAMES:
        runs[name], skipped = newest_finished(root, name)
        notes += [skip_note(label, reason, runs[name]) for label, reason in skipped]
    # Unfinished runs are skipped rather than refused: the pilot prints this table after every part, also after one
    # cut by its time limit, and the finished parts' numbers are worth seeing then; the notes say what was left out.
    if all(run is None for run in runs.values()):
        for note in notes:
            print(note)
        what = "finished run" if notes else f"run of {', '.join(NAMES)}"
        refuse(f"{root} holds no {what}: give {EXPECTED}")
    print_table(table_columns(runs))
    print_throughput(runs)
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
