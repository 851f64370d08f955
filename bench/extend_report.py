"""Table of the context-extension pilot (bench/extend_pilot.sh): loss by position and tokens/s per phase.

    python bench/extend_report.py logs/extend_pilot/logs

Reads the newest run directory of each name: before (the imported model validated at 65536, un-extended),
lighthouse (Lighthouse N steps + dense recovery M in one job) and dense (N + M dense steps). Losses are the dense
ones (``val/loss_dense_pos`` where the run logged it, else ``val/loss_pos``) at the run's last validation, and for
the Lighthouse run also at its last stage-1 validation (the switch).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from lighthouse.eval.run_logs import Run, find_runs, read_run

NAMES = ("before", "lighthouse", "dense")


def newest(root: Path, name: str) -> Run | None:
    runs = find_runs(root / name) if (root / name).is_dir() else []
    return read_run(runs[-1]) if runs else None


def losses_at(run: Run, step: int | None = None) -> dict[str, float]:
    """{position bucket: dense loss} at ``step`` (None: the last validation)."""
    out = {}
    for bucket in run.position_buckets():
        series = run.series(f"val/loss_dense_pos/{bucket}")
        if not series.steps:
            series = run.series(f"val/loss_pos/{bucket}")
        by_step = series.as_dict()
        if by_step:
            out[bucket] = by_step.get(max(by_step) if step is None else step)
    return out


def tokens_per_sec(run: Run, stage: int) -> float | None:
    values = [r["tokens_per_sec"] for r in run.throughput if r.get("stage", 1) == stage and r.get("tokens_per_sec")]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("logs", type=Path, help="the pilot's logs folder ($PILOT/logs)")
    root = p.parse_args(argv).logs
    runs = {name: newest(root, name) for name in NAMES}
    columns: dict[str, dict[str, float]] = {}
    if runs["before"] is not None:
        columns["imported, un-extended"] = losses_at(runs["before"])
    lighthouse = runs["lighthouse"]
    if lighthouse is not None:
        switch = lighthouse.stage_switch_step()
        stage1 = [s for s in lighthouse.series("val/loss_dense").steps if switch is None or s <= switch]
        if stage1:
            columns[f"Lighthouse, step {stage1[-1]}"] = losses_at(lighthouse, stage1[-1])
        columns["Lighthouse + recovery, end"] = losses_at(lighthouse)
    if runs["dense"] is not None:
        columns["dense extension, end"] = losses_at(runs["dense"])
    buckets = sorted({b for c in columns.values() for b in c}, key=lambda b: _start(b))
    print("| positions | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for bucket in buckets:
        cells = [columns[c].get(bucket) for c in columns]
        print(f"| {bucket} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")
    for name, stage in (("lighthouse", 1), ("lighthouse", 2), ("dense", 1)):
        run = runs[name]
        tps = None if run is None else tokens_per_sec(run, stage)
        if tps is not None:
            phase = {("lighthouse", 1): "Lighthouse", ("lighthouse", 2): "recovery (dense)"}.get((name, stage), "dense")
            print(f"tokens/s, {phase}: {tps:,.0f} (median over the throughput windows)")


def _start(bucket: str) -> int:
    first = bucket.split("-")[0]
    return int(first[:-1]) * 1024 if first.endswith("k") else int(first)


if __name__ == "__main__":
    main()
