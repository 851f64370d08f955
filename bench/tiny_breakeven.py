"""The break-even speed-up in bench/tiny_branch.py's records: how much faster a Lighthouse step must be than a dense
one for Lighthouse + recovery (LH) to end level with the annealed dense run of the same time (E).

Each record holds, per run length S, seed and switch, LH - E for several speed-ups R (``--speedup``), plus LH - D.
At R = 1 the equal-time arm is D itself (E trains every step of D, tested bit for bit), so LH - D is the R = 1
point. The rule, going up from R = 1:

- LH - D <= 0: Lighthouse is level or ahead without a speed-up, and the break-even is "<= 1x", whatever the larger
  R's give (E has fewer steps there than D, so a positive LH - E is noise);
- else the first measured R where LH - E is <= 0 brackets the break-even with the R before it: LH - E is interpolated
  linearly in E's step count, the quantity the speed-up buys, between the two, and the R of the step count where it
  is 0 is the break-even (a later sign change back is noise past it);
- where LH - E stays above 0 at every measured R, the break-even lies beyond the largest.

The inverse of the break-even is what a Lighthouse step is worth in dense steps. A NaN or infinite difference (a
diverged run, a damaged file) is refused: it would read as a break-even. Rows carry the model width, the warm-up W
and the record's file, which tell apart records of the same S, seed and switch; a file named twice is read once.

    python bench/tiny_breakeven.py bench/report/tiny_branch/breakeven_s*_seed*.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WIDTH = 64  # of records written before tiny_branch.py had --dim


class BadValue(ValueError):
    """A record field that holds no usable number."""


@dataclass(frozen=True)
class BreakEven:
    steps: int
    seed: int
    switch: int
    speedup: float | None  # None: beyond ``bound`` (LH - E > 0 at every measured R) or no speed-up needed
    bound: float  # the largest R measured, or 1 where LH - D <= 0
    warmup: int  # W
    width: int
    record: str  # the file it was read from

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
    """The R where LH - E first reaches 0 going up from the lowest R, linear in E's steps between the measured R's
    around it; None where LH - E is <= 0 already at the lowest R, or > 0 at every R (the module's rule)."""
    points = sorted(gaps.items())  # lowest R (the most E steps) first
    if points[0][1] <= 0:
        return None
    for (r_before, gap_before), (r, gap) in itertools.pairwise(points):
        if gap <= 0:  # every R before it has LH - E > 0
            steps_before, steps = (equal_time_steps(warmup, switch, total, x) for x in (r_before, r))
            crossing = steps + (steps_before - steps) * -gap / (gap_before - gap)
            return (switch - warmup) / (crossing - (total - switch))
    return None


def number(value, where: str, least: float = -math.inf) -> float:
    """``value``, checked to be a finite number >= ``least``: NaN compares false with everything and infinity
    divides to NaN, so either would pass for a break-even or a bound."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= least):
        valid = "a finite number" + (f" >= {least:g}" if least > -math.inf else "")
        raise BadValue(f"{where} is {value!r}; valid: {valid}")
    return float(value)


def arm_gaps(arm: dict, where: str) -> dict[float, float]:
    """{R: LH - E} of one arm, LH - D as the R = 1 point, every value checked."""
    gaps = {1.0: number(arm["gap"], f"{where}.gap")}
    for k, equal in enumerate(arm["equal_time"]):
        speedup = number(equal["speedup"], f"{where}.equal_time[{k}].speedup", least=1)
        gaps[speedup] = number(equal["lh_minus_e"], f"{where}.equal_time[{k}].lh_minus_e (R = {speedup:g})")
    return gaps


def break_evens(record: dict, name: str = "") -> list[BreakEven]:
    """One BreakEven per (S, seed, switch) of a tiny_branch.py record that measured at least one E, labelled with
    the record's ``name``. A run that was cut off (``partial``) is left out: its missing E's would move the
    break-even. Raises BadValue naming the field of a NaN or infinite difference or speed-up."""
    width = record.get("args", {}).get("dim", DEFAULT_WIDTH)
    found = []
    for i, result in enumerate(record["results"]):
        if result.get("partial"):
            continue
        for j, arm in enumerate(result.get("arms", [])):
            if not arm.get("equal_time"):
                continue
            gaps = arm_gaps(arm, f"results[{i}].arms[{j}]")
            total, warmup, switch = result["steps"], result["warmup"], arm["switch"]
            speedup = break_even(warmup, switch, total, gaps)
            bound = 1.0 if speedup is None and gaps[1.0] <= 0 else max(gaps)
            found.append(BreakEven(total, result["seed"], switch, speedup, bound, warmup, width, name))
    return found


def table(rows: list[BreakEven]) -> str:
    lines = [
        "| S | W | width | seed | switch | break-even R | a Lighthouse step in dense steps | record |",
        "|---" * 8 + "|",
    ]
    for row in sorted(rows, key=lambda r: (r.steps, r.warmup, r.width, r.switch, r.seed, r.record)):
        lines.append(
            f"| {row.steps} | {row.warmup} | {row.width} | {row.seed} | {row.switch} | {row.cell()} | {row.worth()} "
            f"| {row.record} |"
        )
    return "\n".join(lines)


def distinct(paths: list[str]) -> list[str]:
    """``paths`` without a second name for a file already named (a shell glob plus the same file by hand would
    otherwise give every one of its rows twice)."""
    first = {}
    for path in paths:
        first.setdefault(Path(path).resolve(), path)
    return list(first.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="+", help="bench/tiny_branch.py --json files")
    args = parser.parse_args()
    rows = []
    for path in distinct(args.records):
        try:
            with open(path) as f:
                found = break_evens(json.load(f), path)
        except BadValue as error:
            sys.exit(f"tiny_breakeven: {path}: {error}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
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
