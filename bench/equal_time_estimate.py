"""LH - E for seeds of bench/branch.py that did not run E, estimated from D's validation curve and calibrated on seeds
that did (either design: W is read from each seed's plan, 0 from scratch).

E trains densely for the time LH's training took (bench/branch.py's rule: LH's phases at their steady-state step
times, divided by D's dense step time), with the whole LR schedule fitted into its fewer steps. Its final loss is
estimated as D's loss at the step where E would end, plus an offset: what annealing in fewer steps costs (or gains)
against D, which is still on its longer schedule there. The calibration seeds, which ran all three arms, measure
that offset; the estimate gives its mean and its range over them. A seed that is also a calibration seed is
estimated from the others' offsets (leave one out), and its measured E is shown beside the estimate: the check of the
method on the seeds where the answer is known.

D's loss at a step is its validation loss (``val/loss_dense``) interpolated linearly between the two validations
around it, moved to the final evaluation's windows by D's own final loss minus its validation at its last step (the
two score different windows). Linear interpolation on a convex curve puts D slightly high, in the calibration as in
the estimate, so that bias mostly cancels. An estimate, not a measurement: it assumes the offset carries over from
the calibration seeds (another context or length) to the estimated ones. Not across designs, which the tool refuses
unless ``--across-designs`` is given: E ended +0.024..+0.042 above D after a dense warm-up, but +0.187 / +0.233 from
step 0 (32768, measured 2026-12-05), so an estimate from step 0 calibrated after a warm-up had LH - E -0.09 where
-0.26 was measured.

    PYTHONPATH=src python bench/equal_time_estimate.py --calibration bench/report/runs/branch_32k-seed*.tgz \\
        --runs bench/report/runs/branch_64k-seed*.tgz
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from branch import folder_name, from_scratch
from branch_seeds import SeedRun, load_seeds


@dataclass(frozen=True)
class Estimate:
    name: str  # the seed folder's name: the same seed number in two designs is two seeds
    e_end: int
    d_at_e_end: float  # D's loss at E's end, on the final windows
    lh: float
    offsets: tuple[float, ...]  # E - D at E's end, per calibration seed other than this one
    e_measured: float | None  # E's final loss, where the seed ran E

    def lh_minus_e(self, offset: float) -> float:
        return self.lh - (self.d_at_e_end + offset)


def equal_time_end(seed: SeedRun) -> int:
    """The step E ends at: W plus LH's training time (steps x steady-state step time, per phase) in D's dense steps."""
    d, lh = seed.arms["D"], seed.arms["LH"]
    if "dense" not in d.train_s or not {"lighthouse", "dense"} <= set(lh.train_s):
        raise ValueError(f"{seed.folder.name}: D or LH has no throughput records to time its steps by")
    d_step_s = d.train_s["dense"] / (d.end - seed.plan["warmup"])
    return seed.plan["warmup"] + max(1, round(sum(lh.train_s.values()) / d_step_s))


def d_final_at(seed: SeedRun, step: int) -> float:
    """D's loss at ``step`` on the final evaluation's windows (module docstring)."""
    d = seed.arms["D"]
    curve = {s: v for s, _, v in d.curve}
    if d.end not in curve:
        raise ValueError(f"{seed.folder.name}: D has no validation at its last step {d.end}, to move its curve by")
    steps = sorted(curve)
    if not steps[0] <= step <= steps[-1]:
        raise ValueError(f"{seed.folder.name}: step {step} lies outside D's validated steps {steps[0]}-{steps[-1]}")
    at = float(np.interp(step, steps, [curve[s] for s in steps]))
    return at + seed.final_loss("D") - curve[d.end]


def seed_name(seed: SeedRun) -> str:
    """The seed's name from its plan (config, design, seed), as branch.py names its folder: a seed is left out of
    its own calibration by what it is, not by what its folder or archive was renamed to."""
    return folder_name(seed.plan["config"], seed.plan["seed"], seed.plan["warmup"])


def calibration_offsets(seeds: list[SeedRun]) -> dict[str, float]:
    """Per seed that ran E to its final evaluation: E's final loss minus D's at the step E ended."""
    found = {}
    for seed in seeds:
        if seed.evaluated("D") and seed.evaluated("E") and seed.equal_time:
            found[seed_name(seed)] = seed.final_loss("E") - d_final_at(seed, seed.equal_time["e_end"])
    return found


def estimates(seeds: list[SeedRun], offsets: dict[str, float]) -> list[Estimate]:
    """One per seed with D and LH evaluated and at least one other seed's offset."""
    found = []
    for seed in seeds:
        others = tuple(o for name, o in offsets.items() if name != seed_name(seed))
        if seed.evaluated("D") and seed.evaluated("LH") and others:
            end = equal_time_end(seed)
            measured = seed.final_loss("E") if seed.evaluated("E") else None
            found.append(Estimate(seed_name(seed), end, d_final_at(seed, end), seed.final_loss("LH"), others, measured))
    return found


def design(seed: SeedRun) -> str:
    return "from step 0" if from_scratch(seed.plan) else "after a dense warm-up"


def mixed_designs(calibration: list[SeedRun], offsets: dict[str, float], runs: list[SeedRun]) -> str | None:
    """Why the calibration's design differs from the estimated seeds' (module docstring), or None where it does not."""
    used = sorted({design(s) for s in calibration if seed_name(s) in offsets})
    estimated = sorted({design(s) for s in runs})
    if len(set(used) | set(estimated)) == 1:
        return None
    return (
        f"the --calibration seeds run {' and '.join(used)} and the --runs seeds {' and '.join(estimated)}; E's offset "
        "differs between the designs (+0.024..+0.042 after a warm-up, +0.187 / +0.233 from step 0, measured at "
        "32768): calibrate on seeds of the same design, or pass --across-designs"
    )


def table(offsets: dict[str, float], rows: list[Estimate]) -> str:
    lines = [
        "calibration (E - D at E's end): "
        + ", ".join(f"{name} {o:+.4f}" for name, o in offsets.items())
        + f"; mean {statistics.fmean(offsets.values()):+.4f}",
        "",
        "| seed | E's end (step) | D there | E estimated | LH | LH - E estimated | over the offsets' range "
        "| E measured | LH - E measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mean = statistics.fmean(row.offsets)
        low, high = row.lh_minus_e(max(row.offsets)), row.lh_minus_e(min(row.offsets))
        measured = (
            "| - | - |" if row.e_measured is None else f"| {row.e_measured:.4f} | {row.lh - row.e_measured:+.4f} |"
        )
        lines.append(
            f"| {row.name} | {row.e_end} | {row.d_at_e_end:.4f} | {row.d_at_e_end + mean:.4f} | {row.lh:.4f} "
            f"| {row.lh_minus_e(mean):+.4f} | {low:+.4f} to {high:+.4f} {measured}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", nargs="+", type=Path, required=True, help="archives of seeds that ran E")
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="archives of seeds to estimate E for")
    parser.add_argument(
        "--across-designs",
        action="store_true",
        help="calibrate seeds from step 0 on seeds after a warm-up or the other way (off: refused, see above)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            calibration = load_seeds(args.calibration, Path(scratch) / "calibration")
            runs = load_seeds(args.runs, Path(scratch) / "runs")
            offsets = calibration_offsets(calibration)
            rows = estimates(runs, offsets)
        except (OSError, ValueError, KeyError, tarfile.TarError) as error:
            sys.exit(f"equal_time_estimate: {type(error).__name__}: {error}")
    mixed = mixed_designs(calibration, offsets, runs)
    if mixed and not args.across_designs:
        sys.exit(f"equal_time_estimate: {mixed}")
    if not offsets:
        sys.exit("equal_time_estimate: no --calibration seed has D and E with their final evaluations")
    if not rows:
        sys.exit(
            "equal_time_estimate: no --runs seed has D and LH with their final evaluations and another seed's "
            "calibration"
        )
    print(table(offsets, rows))


if __name__ == "__main__":
    main()
