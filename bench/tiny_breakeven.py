"""The break-even speed-up in bench/tiny_branch.py's records: how much faster a Lighthouse step must be than a dense
one for Lighthouse + recovery (LH) to end level with the annealed dense run of the same time (E).

Each record holds, per run length S, seed and switch, LH - E for several speed-ups R (``--speedup``), plus LH - D.
At R = 1 the equal-time arm is D itself (E trains every step of D, tested bit for bit), so LH - D is the R = 1
point. LH - E is interpolated linearly in E's step count, the quantity the speed-up buys, between the two measured
points where it changes sign; the R of that step count is the break-even. Its inverse is what a Lighthouse step is
worth in dense steps. Where LH - E stays above 0 at every measured R, the break-even lies beyond the largest; where
LH - D is already below 0, Lighthouse wins without a speed-up.

    python bench/tiny_breakeven.py bench/report/tiny_branch/breakeven_s*_seed*.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class BreakEven:
    steps: int
    seed: int
    switch: int
    speedup: float | None  # None: beyond ``bound`` (LH - E > 0 at every measured R) or no speed-up needed
    bound: float  # the largest R measured, or 1 where LH - D < 0

    def cell(self) -> str:
        if self.speedup is not None:
            return f"{self.speedup:.1f}x"
        return f"<= {self.bound:g}x" if self.bound == 1 else f"> {self.bound:g}x"

    def worth(self) -> str:
        if self.speedup is not None:
            return f"{1 / self.speedup:.2f}"
        return ">= 1" if self.bound == 1 else f"< {1 / self.bound:.2f}"


def equal_time_steps(warmup: int, switch: int, total: int, speedup: float) -> float:
    """E's step count after W for speed-up R: LH's Lighthouse steps at 1/R of a dense step, then its dense ones."""
    return (switch - warmup) / speedup + (total - switch)


def break_even(warmup: int, switch: int, total: int, gaps: dict[float, float]) -> float | None:
    """The R where LH - E crosses 0, linear in E's steps between the measured R's; None if it never crosses."""
    # From R = 1 (the most E steps) towards larger R: the first pair of neighbours where LH - E turns <= 0.
    points = sorted(((equal_time_steps(warmup, switch, total, r), gap) for r, gap in gaps.items()), reverse=True)
    for (steps_b, gap_b), (steps_a, gap_a) in zip(points, points[1:], strict=False):
        if gap_a <= 0 < gap_b:
            steps = steps_a + (steps_b - steps_a) * -gap_a / (gap_b - gap_a)
            sparse_part = steps - (total - switch)
            return (switch - warmup) / sparse_part
    return None


def break_evens(record: dict) -> list[BreakEven]:
    """One BreakEven per (S, seed, switch) of a tiny_branch.py record that measured at least one E. A run that was
    cut off (``partial``) is left out: its missing E's would move the break-even."""
    found = []
    for result in record["results"]:
        if result.get("partial"):
            continue
        for arm in result.get("arms", []):
            if not arm.get("equal_time"):
                continue
            gaps = {1.0: arm["gap"]} | {e["speedup"]: e["lh_minus_e"] for e in arm["equal_time"]}
            total, warmup, switch = result["steps"], result["warmup"], arm["switch"]
            speedup = break_even(warmup, switch, total, gaps)
            bound = 1.0 if speedup is None and arm["gap"] < 0 else max(gaps)
            found.append(BreakEven(total, result["seed"], switch, speedup, bound))
    return found


def table(rows: list[BreakEven]) -> str:
    lines = ["| S | seed | switch | break-even R | a Lighthouse step in dense steps |", "|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r.steps, r.switch, r.seed)):
        lines.append(f"| {row.steps} | {row.seed} | {row.switch} | {row.cell()} | {row.worth()} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="bench/tiny_branch.py --json files")
    args = parser.parse_args()
    rows = []
    for path in args.records:
        try:
            with open(path) as f:
                found = break_evens(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as error:
            sys.exit(f"tiny_breakeven: {path}: not a tiny_branch.py record ({type(error).__name__}: {error})")
        if not found:
            print(
                f"tiny_breakeven: {path}: no list of equal-time arms (run without --speedup, or written before "
                "2026-12-04); skipped",
                file=sys.stderr,
            )
        rows += found
    if not rows:
        sys.exit("tiny_breakeven: no record holds an equal-time arm (run tiny_branch.py with --speedup)")
    print(table(rows))


if __name__ == "__main__":
    main()
