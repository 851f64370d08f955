"""The comparison report: markdown tables and PNG plots from the run directories that bench/compare.py made.

    python bench/compare.py report --out logs/compare_32k logs/compare_64k --report-dir bench/report

Arms are compared on ``val/loss_dense`` only (stage-1 validation with Lighthouse attention sees later tokens of a
tile; lit_module.py), over the paired seeds: those whose two arms both have a final evaluation. Every table and plot
uses those seeds only (where none is paired, every run, each arm's seeds named), and the report names each seed left
out and why: an arm averaged over seeds its partner lacks would mix the seed-to-seed spread into the comparison. A
difference is called only where its 95 % Student-t interval over the paired seeds excludes 0, as in
bench/branch_report.py. Wall clock counts each job from its start to its exit (start-up, compilation, validation
and checkpoints included, the gaps between jobs not); "training only" is steps times the steady-state step time
of ThroughputRecorder, which leaves all of those out.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from campaign import read_json
from student_t import call, t_interval

from lighthouse.eval.run_logs import read_config, read_json_lines

ARM_LABEL = {"dense": "dense", "lighthouse": "Lighthouse + recovery"}
PHASES = ("lighthouse", "dense")  # what the non-dense layers run: stage 1 of the Lighthouse arm, or dense SDPA
PLAN_KEYS = ("steps", "switch_step", "share", "config", "val_every")  # what the report reads of compare.json


# ---- run-directory reader -------------------------------------------------------------------------------------
def read_logged(folder: Path) -> tuple[dict[str, dict[int, tuple[float, float]]], list[dict]]:
    """(tag -> {step: (wall time, value)}, throughput.jsonl records) of the run directly in ``folder`` (no event
    files: both empty); a later launch wins at a step both hold (lighthouse.eval.run_logs)."""
    from lighthouse.eval.run_logs import EVENTS_GLOB, read_run

    if not any(folder.glob(EVENTS_GLOB)):
        return {}, []
    run = read_run(folder)
    scalars = {
        tag: {step: (wall, value) for step, wall, value in zip(s.steps, s.wall_times, s.values, strict=True)}
        for tag, s in run.scalars.items()
    }
    return scalars, run.throughput


# ---- one run --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    arm: str
    seed: int
    steps: int
    switch_step: int | None  # None: the dense arm
    tokens_per_step: int
    curve: list[tuple[int, float, float]]  # (global step, elapsed s, val/loss_dense)
    last: dict[str, float]  # every val/ tag at the last validation
    at_switch: dict[str, float]  # val/loss and val/loss_dense at the last validation <= the switch step
    final_eval: dict[str, float]
    wall_s: dict[str, float]  # per phase, measured over the jobs
    train_s: dict[str, float | None]  # per phase, steps x steady-state step time
    tokens_per_s: dict[str, float | None]
    validation_s: float
    startup_s: float  # per job, from its start to the end of its first step (imports, data, compilation)
    recompile_s: float | None  # the first dense step after the switch, beyond a steady dense step
    jobs: int
    switch_elapsed_s: float | None = None
    passkey_curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, elapsed s, exact match)

    @property
    def final_loss(self) -> float:
        return self.last["val/loss_dense"]

    @property
    def total_wall_s(self) -> float:
        return sum(self.wall_s.values())

    @property
    def total_train_s(self) -> float | None:
        parts = [v for v in self.train_s.values()]
        return None if any(v is None for v in parts) else sum(parts)


def phase_of(arm: str, stage: float) -> str:
    return "lighthouse" if arm == "lighthouse" and stage < 1.5 else "dense"


def job_spans(run_dir: Path, scalars: dict) -> list[tuple[float, float]]:
    """(start, end) wall time of every training job: compare.py's records, else each event file's first/last."""
    spans = [(r["start"], r["end"]) for r in read_json_lines(run_dir / "launches.jsonl") if r.get("kind") == "fit"]
    if spans:
        return spans
    walls = sorted(w for tag in scalars.values() for w, _ in tag.values())
    return [(walls[0], walls[-1])] if walls else []


def elapsed(wall: float, spans: list[tuple[float, float]]) -> float:
    """Seconds of job time before ``wall``, with the jobs back to back (the gaps between them left out)."""
    done = 0.0
    for start, end in spans:
        if wall <= end:
            return done + max(0.0, wall - start)
        done += end - start
    return done


def split_wall_by_phase(spans, points: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per phase: inside a job, the time up to a logged point belongs to that point's phase (a step's
    log comes at its end; a validation's at its end), and the time after the last point to the last point's."""
    out = dict.fromkeys(PHASES, 0.0)
    for start, end in spans:
        inside = [(w, ph) for w, ph in points if start <= w <= end]
        if not inside:
            continue
        edges = [start] + [w for w, _ in inside] + [end]
        phases = [ph for _, ph in inside] + [inside[-1][1]]
        for (a, b), ph in zip(zip(edges[:-1], edges[1:], strict=True), phases, strict=True):
            out[ph] += b - a
    return out


def global_steps(logged: dict, steps: int, run_dir: Path) -> dict[str, dict[int, tuple[float, float]]]:
    """The scalars, keyed by global step as lighthouse.eval.run_logs reads them (runs logged before the step
    convention of lighthouse.train.logger included), once it is checked that the run trained all its steps."""
    if max(logged["train/loss"]) != steps:
        raise ValueError(f"{run_dir}: train/loss ends at step {max(logged['train/loss'])}, not at {steps}")
    return logged


def load_run(run_dir: Path, arm: str, seed: int, plan: dict) -> Run:
    logged, throughput = read_logged(run_dir)
    final_logged, _ = read_logged(run_dir / "final_eval")
    steps, switch = plan["steps"], plan["switch_step"] if arm == "lighthouse" else None
    tags = global_steps(logged, steps, run_dir)
    spans = job_spans(run_dir, logged)
    step_walls = {s: w for s, (w, _) in tags.get("train/stage", tags["train/loss"]).items()}  # when each step ended
    val = {t: series for t, series in tags.items() if t.startswith("val/")}
    dense = val["val/loss_dense"]
    last = max(dense)
    before = [s for s in dense if switch is not None and s <= switch]

    def phase(step: int) -> str:
        return "lighthouse" if switch is not None and step <= switch else "dense"

    points = sorted([(w, phase(s)) for s, w in step_walls.items()] + [(w, phase(s)) for s, (w, _) in dense.items()])
    train_s, tokens_per_s = steady_state(throughput, arm, steps, switch)
    config = read_run_config(run_dir / "config.yaml")
    data = config["data"]
    tokens_per_step = data["seq_len"] * data.get("batch_size", 1) * config["trainer"].get("accumulate_grad_batches", 1)
    return Run(
        arm=arm,
        seed=seed,
        steps=steps,
        switch_step=switch,
        tokens_per_step=tokens_per_step,
        curve=[(s, elapsed(w, spans), v) for s, (w, v) in sorted(dense.items())],
        last={t: series[last][1] for t, series in val.items() if last in series},
        at_switch={t: val[t][max(before)][1] for t in ("val/loss", "val/loss_dense")} if before else {},
        final_eval={t: v for t, series in final_logged.items() for _, (_, v) in series.items()},
        wall_s=split_wall_by_phase(spans, points),
        train_s=train_s,
        tokens_per_s=tokens_per_s,
        validation_s=sum(w - step_walls[s] for s, (w, _) in dense.items() if step_walls.get(s, w) <= w),
        startup_s=sum(min((w for w in step_walls.values() if a <= w <= b), default=a) - a for a, b in spans),
        recompile_s=recompile(step_walls, switch, tokens_per_step, tokens_per_s),
        jobs=len(spans),
        switch_elapsed_s=elapsed(step_walls[switch], spans) if switch in step_walls else None,
        passkey_curve=[(s, elapsed(w, spans), v) for s, (w, v) in sorted(val.get("val/passkey_acc", {}).items())],
    )


def recompile(step_walls: dict[int, float], switch: int | None, tokens_per_step: int, tokens_per_s: dict):
    """Extra time of the first step after the switch (new kernels, recompiled blocks) over a steady dense step."""
    if switch is None or switch not in step_walls or switch + 1 not in step_walls or not tokens_per_s.get("dense"):
        return None
    return step_walls[switch + 1] - step_walls[switch] - tokens_per_step / tokens_per_s["dense"]


def steady_state(records: list[dict], arm: str, steps: int, switch: int | None):
    """Per phase: steps x mean step time of the ThroughputRecorder windows, and tokens/s; None if unmeasured."""
    step_counts = (
        {"lighthouse": switch or 0, "dense": steps - (switch or 0)}
        if arm == "lighthouse"
        else {"lighthouse": 0, "dense": steps}
    )
    train_s, tokens_per_s = {}, {}
    for ph in PHASES:
        if step_counts[ph] == 0:
            continue
        mine = [
            r
            for r in records
            if ("stage" in r and phase_of(arm, r["stage"]) == ph)
            or ("stage" not in r and phase_of(arm, 1.0 if switch is None or r["step"] <= switch else 2.0) == ph)
        ]
        if not mine:
            train_s[ph] = tokens_per_s[ph] = None
            continue
        step_time = statistics.fmean(r["step_time_s"] for r in mine)
        tokens = statistics.fmean(r["tokens_per_sec"] * r["step_time_s"] for r in mine)
        train_s[ph], tokens_per_s[ph] = step_counts[ph] * step_time, tokens / step_time
    return train_s, tokens_per_s


# ---- a comparison folder -------------------------------------------------------------------------------------
def read_run_config(path: Path) -> dict:
    """A run's saved config, with the sections the report reads (model.arch.lighthouse, data.seq_len, trainer);
    anything else is refused naming the file, not left to a KeyError in a table."""
    config = read_config(path)
    model = config.get("model") if isinstance(config, dict) else None
    arch = model.get("arch") if isinstance(model, dict) else None
    data = config.get("data") if isinstance(config, dict) else None
    if not (
        isinstance(arch, dict)
        and isinstance(arch.get("lighthouse"), dict)
        and isinstance(data, dict)
        and "seq_len" in data
        and isinstance(config.get("trainer"), dict)
    ):
        raise ValueError(f"{path} lacks model.arch.lighthouse, data.seq_len or trainer: not the config of a run")
    return config


def load_comparison(out: Path) -> tuple[dict, list[Run]]:
    plan = read_json(out / "compare.json")
    if plan is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(out / "compare.json"))
    missing = [key for key in PLAN_KEYS if key not in plan]
    if missing:  # else a KeyError deep in the tables, naming neither the file nor what it lacks
        raise ValueError(
            f"{out / 'compare.json'} lacks {', '.join(missing)}, which the report reads: not the plan of a "
            "bench/compare.py run"
        )
    runs = []
    for run_dir in sorted(p for p in out.iterdir() if p.is_dir()):
        match = re.fullmatch(r"(dense|lighthouse)-seed(\d+)", run_dir.name)
        if match and (run_dir / "config.yaml").exists():
            runs.append(load_run(run_dir, match.group(1), int(match.group(2)), plan))
    if not runs:
        raise ValueError(f"{out}: no run directories (dense-seedN, lighthouse-seedN) with a config.yaml")
    return plan, runs


def pairing(runs: list[Run]) -> tuple[list[int], dict[int, str]]:
    """The paired seeds (both arms trained and evaluated at the end), and why each other seed is left out."""
    by = {(r.arm, r.seed): r for r in runs}
    paired, left_out = [], {}
    for seed in sorted({r.seed for r in runs}):
        reasons = [
            f"no {label} run" if (arm, seed) not in by else f"{label} has no final evaluation"
            for arm, label in ARM_LABEL.items()
            if (arm, seed) not in by or not by[arm, seed].final_eval
        ]
        if reasons:
            left_out[seed] = ", ".join(reasons)
        else:
            paired.append(seed)
    return paired, left_out


def seeds_sentence(runs: list[Run], paired: list[int], left_out: dict[int, str]) -> str:
    """Which seeds the tables below use, for the section's header."""
    gone = "; ".join(f"seed {seed}: {why}" for seed, why in left_out.items())
    if not paired:
        seeds_of = {arm: sorted(r.seed for r in runs if r.arm == arm) for arm in ARM_LABEL}
        per_arm = ", ".join(f"{ARM_LABEL[arm]} {seeds}" for arm, seeds in seeds_of.items() if seeds)
        return f"No seed is paired ({gone}); the tables below show every run of each arm, seeds {per_arm}."
    if not left_out:
        return f"Seeds {paired} (init and data order, paired)."
    return f"Seeds {paired} (init and data order, paired); left out of every table and plot: {gone}."


def mean_spread(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def minutes(x: float | None) -> str:
    return "-" if x is None else f"{x / 60:.2f}"


def bucket_start(name: str) -> int:
    lo = name.rsplit("/", 1)[-1].split("-")[0]
    return int(lo[:-1]) * 1024 if lo.endswith("k") else int(lo)


def paired_table(plan: dict, by: dict, seeds: list[int]) -> list[str]:
    rows = [
        "| seed | dense | Lighthouse + recovery | paired difference (LH - dense) | wall min, dense | "
        "wall min, LH | speed-up, measured | speed-up, training only |",
        "|---" * 8 + "|",
    ]
    diffs, speed, speed_train = [], [], []
    for s in seeds:
        d, lh = by[("dense", s)], by[("lighthouse", s)]
        diffs.append(lh.final_loss - d.final_loss)
        speed.append(d.total_wall_s / lh.total_wall_s)
        trained = None if None in (d.total_train_s, lh.total_train_s) else d.total_train_s / lh.total_train_s
        speed_train.append(trained)
        rows.append(
            f"| {s} | {f(d.final_loss)} | {f(lh.final_loss)} | {diffs[-1]:+.4f} | {minutes(d.total_wall_s)} "
            f"| {minutes(lh.total_wall_s)} | {ratio(speed[-1])} | {ratio(trained)} |"
        )
    mean, spread = mean_spread(diffs)
    known = [x for x in speed_train if x is not None]
    rows.append(
        f"| mean | {f(statistics.fmean(by[('dense', s)].final_loss for s in seeds))} | "
        f"{f(statistics.fmean(by[('lighthouse', s)].final_loss for s in seeds))} | {mean:+.4f} "
        f"(spread {f(spread)}) | | | {ratio(statistics.fmean(speed))} | "
        f"{ratio(statistics.fmean(known) if known else None)} |"
    )
    return rows + [
        "",
        f"Final `val/loss_dense` at step {plan['steps']}; spread = sample standard deviation of "
        f"the paired differences over {len(seeds)} seed(s). Result: {result(diffs)}",
    ]


def result(diffs: list[float]) -> str:
    """The call on the paired differences: made only where their mean's 95 % t-interval excludes 0 (|mean| > s.d. is
    |t| > sqrt(n), which with two seeds calls a mean whose interval reaches 9 s.d. either side of it)."""
    mean, lo, hi = t_interval(diffs)
    if lo is None:
        return "one seed: no spread to compare the difference with, so no call is made."
    return (
        f"the mean paired difference {mean:+.4f} has the 95 % Student-t interval [{lo:+.4f}, {hi:+.4f}] over the "
        f"seeds; a result is called only where it excludes 0: {call(mean, lo, hi)}."
    )


def loss_at(curve: list[tuple[int, float, float]], t: float) -> float | None:
    """The curve's loss at elapsed time ``t``, linear between its validations; None outside the validated span."""
    for (_, t0, v0), (_, t1, v1) in itertools.pairwise(curve):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return curve[-1][2] if curve and t == curve[-1][1] else None


def equal_time_table(by: dict, seeds: list[int]) -> list[str]:
    """Each Lighthouse arm's final loss against its dense partner's loss at the same job time (the claim is "as
    good in less time", which equal steps alone do not show)."""
    rows = [
        "| seed | LH job time at its last validation, min | LH + recovery | dense at that time | "
        "difference (LH - dense) |",
        "|---" * 5 + "|",
    ]
    diffs = []
    for s in seeds:
        _, lh_t, lh_v = by[("lighthouse", s)].curve[-1]
        dense = loss_at(by[("dense", s)].curve, lh_t)
        if dense is not None:
            diffs.append(lh_v - dense)
        rows.append(
            f"| {s} | {minutes(lh_t)} | {f(lh_v)} | {f(dense)} | {f'{diffs[-1]:+.4f}' if dense is not None else '-'} |"
        )
    if diffs:
        mean, spread = mean_spread(diffs)
        rows.append(f"| mean | | | | {mean:+.4f} (spread {f(spread)}) |")
    return rows + [
        "",
        "Dense's `val/loss_dense` is interpolated linearly between its validations at the job time (start-up, "
        "compilation and validation counted, gaps between jobs left out) at which the Lighthouse arm logged its "
        "final one; '-' where dense had not validated yet. Dense is then mid-way through its learning-rate "
        "schedule, not annealed, which favours Lighthouse: the fair equal-time arm is a dense run whose schedule "
        "ends at that time, which this comparison does not train.",
    ]


def mean_or_none(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def phase_tables(runs_by_arm: dict[str, list[Run]]) -> list[str]:
    rows = [
        "| arm | Lighthouse phase, min | dense phase, min | total, min | of which validation | start-up and first "
        "step | recompilation at the switch | jobs | training only: Lighthouse, min | dense, min | total, min | "
        "tokens/s: Lighthouse | tokens/s: dense |",
        "|---" * 13 + "|",
    ]
    for arm, runs in runs_by_arm.items():
        wall = [mean_or_none([r.wall_s[ph] for r in runs]) if ph in runs[0].train_s else None for ph in PHASES]
        train = [mean_or_none([r.train_s.get(ph) for r in runs]) for ph in PHASES]
        tps = [mean_or_none([r.tokens_per_s.get(ph) for r in runs]) for ph in PHASES]
        total = mean_or_none([r.total_wall_s for r in runs])
        validation = mean_or_none([r.validation_s / r.total_wall_s for r in runs])
        startup, switch = (mean_or_none([getattr(r, k) for r in runs]) for k in ("startup_s", "recompile_s"))
        cells = [
            ARM_LABEL[arm],
            minutes(wall[0]),
            minutes(wall[1]),
            minutes(total),
            f"{100 * validation:.1f} %",
            f"{startup:.0f} s",
            "-" if switch is None else f"{round(switch)} s",  # round(): no "-0 s" from timing noise
            f"{statistics.fmean(r.jobs for r in runs):.1f}",
            minutes(train[0]),
            minutes(train[1]),
            minutes(mean_or_none([r.total_train_s for r in runs])),
            f(tps[0], 0),
            f(tps[1], 0),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows + [
        "",
        "Means over seeds. Measured wall clock runs from each job's start to its exit (start-up, "
        "compilation, validation, checkpoints; the gaps between time-limited jobs are left out). "
        "Training only = steps x steady-state step time (ThroughputRecorder: no warm-up, validation, "
        "checkpointing or steps right after the switch).",
    ]


def passkey_tables(runs_by_arm: dict[str, list[Run]], digits: int) -> list[str]:
    out = []
    for arm, runs in runs_by_arm.items():
        cells = sorted(
            {t for r in runs for t in r.final_eval if t.startswith("val/passkey_cell/")},
            key=lambda t: (bucket_start(t.rsplit("/", 1)[1].split("_d")[0] + "-"), int(t.split("_d")[-1])),
        )
        if not cells:
            continue
        lengths = sorted({t.rsplit("/", 1)[1].split("_d")[0] for t in cells}, key=lambda n: bucket_start(n + "-"))
        depths = sorted({int(t.split("_d")[-1]) for t in cells})
        mean = {t: statistics.fmean(r.final_eval[t] for r in runs if t in r.final_eval) for t in cells}
        out += [
            f"**{ARM_LABEL[arm]}** (exact match per depth; last column exact / digit accuracy):",
            "",
            "| length | " + " | ".join(f"depth {d} %" for d in depths) + " | all |",
            "|---" * (len(depths) + 2) + "|",
        ]
        for n in lengths:
            per_length = [
                statistics.fmean(r.final_eval.get(f"val/passkey{k}/{n}", float("nan")) for r in runs)
                for k in ("_acc", "_digit_acc")
            ]
            out.append(
                f"| {n} | "
                + " | ".join(f(mean.get(f"val/passkey_cell/{n}_d{d:02d}"), 2) for d in depths)
                + f" | {per_length[0]:.2f} / {per_length[1]:.2f} |"
            )
        exact = statistics.fmean(r.final_eval.get("val/passkey_acc", float("nan")) for r in runs)
        digit = statistics.fmean(r.final_eval.get("val/passkey_digit_acc", float("nan")) for r in runs)
        out += ["", f"All cells: exact {exact:.3f}, digit accuracy {digit:.3f}.", ""]
    if out:
        out.append(
            f"Chance: digit accuracy 0.1, exact match 1e-{digits} ({digits}-digit keys). Greedy exact match "
            f"over the full vocabulary, scored in one teacher-forced forward (lighthouse/eval/passkey.py)."
        )
    return out


def bucket_table(runs_by_arm: dict[str, list[Run]]) -> list[str]:
    tags = sorted(
        {t for runs in runs_by_arm.values() for r in runs for t in r.last if t.startswith("val/loss_dense_pos/")},
        key=bucket_start,
    )
    arms = list(runs_by_arm)
    rows = ["| positions | " + " | ".join(ARM_LABEL[a] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for t in tags:
        rows.append(
            f"| {t.rsplit('/', 1)[1]} | "
            + " | ".join(f(statistics.fmean(r.last[t] for r in runs_by_arm[a])) for a in arms)
            + " |"
        )
    return rows


def lookahead_table(runs: list[Run]) -> list[str]:
    rows = [
        "| seed | at the switch: Lighthouse attention | dense | difference | at the end: Lighthouse attention | "
        "dense | difference |",
        "|---" * 7 + "|",
    ]
    for r in runs:
        sw, end = r.at_switch, r.final_eval
        cells = []
        for part in (sw, end):
            lh, dense = part.get("val/loss"), part.get("val/loss_dense")
            cells += [f(lh), f(dense), "-" if None in (lh, dense) else f"{lh - dense:+.4f}"]
        rows.append(f"| {r.seed} | " + " | ".join(cells) + " |")
    return rows + [
        "",
        "The same weights validated with Lighthouse attention in the non-dense layers and with every "
        "layer dense: at the last validation at or before the switch, and for the final checkpoint "
        "(`final_eval/`). At the switch the difference mixes the sparse-trained weights read with dense attention "
        "and the short-range look-ahead that the paper's selection allows and training learns to use (op README "
        "§8: a model trained with it predicts independent random tokens below chance). The probe's first-half "
        "measurement on a 32768 checkpoint at its switch, -0.0007 +- 0.0005 nats, cannot see a short-range "
        "look-ahead and does not tell them apart.",
    ]


# ---- plots ------------------------------------------------------------------------------------------------------
COLORS = {"dense": "tab:blue", "lighthouse": "tab:orange"}


def plot_curves(
    runs: list[Run],
    path: Path,
    x_of,
    xlabel: str,
    switch_x,
    curve=lambda r: r.curve,
    ylabel: str = "validation loss, dense attention (nats/token)",
) -> None:
    """``curve(run)`` of every run against ``x_of(run, step, elapsed)``, the switch of each Lighthouse run marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    labelled = set()
    for r in sorted(runs, key=lambda r: (r.arm, r.seed)):
        xs = [x_of(r, s, t) for s, t, _ in curve(r)]
        label = ARM_LABEL[r.arm] if r.arm not in labelled else None
        labelled.add(r.arm)
        ax.plot(xs, [v for *_, v in curve(r)], marker="o", ms=3, color=COLORS[r.arm], alpha=0.85, label=label)
        x = switch_x(r)
        if x is not None:
            ax.axvline(
                x, color=COLORS[r.arm], ls=":", lw=1, label="switch to dense" if "switch" not in labelled else None
            )
            labelled.add("switch")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_throughput(runs_by_arm: dict[str, list[Run]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    names, values, colors = [], [], []
    for arm, runs in runs_by_arm.items():
        for ph in PHASES:
            known = [r.tokens_per_s[ph] for r in runs if r.tokens_per_s.get(ph) is not None]
            if known:
                names.append(
                    "dense arm"
                    if arm == "dense"
                    else f"Lighthouse arm, stage {1 if ph == 'lighthouse' else 2}\n({ph} attention)"
                )
                values.append(statistics.fmean(known))
                colors.append(COLORS[ph])
    if not values:
        ax.text(0.5, 0.5, "no steady-state throughput records (runs too short)", ha="center", transform=ax.transAxes)
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), names, fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("training tokens/s (steady state)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_buckets(runs_by_arm: dict[str, list[Run]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm, runs in runs_by_arm.items():
        tags = sorted({t for r in runs for t in r.last if t.startswith("val/loss_dense_pos/")}, key=bucket_start)
        ax.plot(
            range(len(tags)),
            [statistics.fmean(r.last[t] for r in runs) for t in tags],
            marker="o",
            color=COLORS[arm],
            label=ARM_LABEL[arm],
        )
        ax.set_xticks(range(len(tags)), [t.rsplit("/", 1)[1] for t in tags])
    ax.set_xlabel("token positions in the window")
    ax.set_ylabel("final validation loss, dense")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the report --------------------------------------------------------------------------------------------------
def data_line(manifest_path: Path, data: dict, steps: int) -> list[str]:
    """What the runs trained on, and how many passes over the training split the steps make: the default corpus
    is the interpreter's standard library, whose size depends on how Python was packaged on the machine."""
    from lighthouse.data.packing import num_windows

    if not manifest_path.exists():
        return []
    manifest = read_json(manifest_path)
    corpus, train = manifest["corpus"], manifest["splits"]["train"]
    source = f"`{corpus['spec']}`" + (f" (Python {corpus['python']}, {corpus['root']})" if corpus.get("python") else "")
    windows = num_windows(train["tokens"], data["seq_len"])
    passes = steps * data.get("batch_size", 1) / windows if windows else float("nan")
    return [
        f"- Data: {source}, {manifest['tokenizer']['spec']} tokenizer; training split {train['documents']} documents, "
        f"{train['tokens']:,} tokens = {windows} windows of {data['seq_len']}, so {steps} steps are {passes:.2f} "
        f"passes over it (a window replaced by a passkey document counts; its filler is training text too)."
    ]


def section_name(out: Path) -> str:
    """What names ``out``'s section and PNGs: the name of the folder it means (``.`` or ``cmp/..`` have none of their
    own); a symbolic link keeps the name it was given."""
    return Path(os.path.abspath(out)).name


def section(out: Path, report_dir: Path, loaded: tuple[dict, list[Run]] | None = None) -> list[str]:
    """The markdown of comparison ``out`` (``loaded``: what load_comparison gave for it), its PNGs in ``report_dir``."""
    plan, found = loaded or load_comparison(out)
    tag = section_name(out)
    paired, left_out = pairing(found)
    runs = [r for r in found if r.seed in paired] if paired else found
    by = {(r.arm, r.seed): r for r in runs}
    runs_by_arm = {a: [r for r in runs if r.arm == a] for a in ("dense", "lighthouse") if any(r.arm == a for r in runs)}
    config = read_run_config(out / f"{runs[0].arm}-seed{runs[0].seed}" / "config.yaml")
    arch, data = config["model"]["arch"], config["data"]
    lh = arch["lighthouse"]
    lines = [
        f"## {tag}",
        "",
        f"- Model: dim {arch['dim']}, {arch['n_layers']} layers, {arch['n_heads']} heads, SwiGLU {arch['ffn_hidden']}, "
        f"{data['tokenizer']} tokens, dense layers {arch['dense_layers']}; Lighthouse L={lh['levels']}, "
        f"p={lh['pooling_factor']}, K={lh['topk']}.",
        f"- Context {data['seq_len']}, batch {data.get('batch_size')}, {plan['steps']} steps per arm; Lighthouse "
        f"arm: stage 1 for steps 1-{plan['switch_step']} ({plan['share']:.1%}), dense after; same LR schedule over "
        f"{plan['steps']} steps. {seeds_sentence(found, paired, left_out)} Passkey "
        f"documents: {data.get('passkey_fraction', 0.0):.0%} of training windows.",
        f"- Device: {plan.get('device', '?')}, torch {plan.get('torch', '?')}; started {plan.get('started', '?')}. "
        f"Config `{plan['config']}`, validation every {plan['val_every']} steps.",
        *data_line(out / f"{runs[0].arm}-seed{runs[0].seed}" / "data_manifest.json", data, plan["steps"]),
        "",
    ]
    if paired:
        lines += ["### Final validation loss (dense attention), paired by seed", ""] + paired_table(plan, by, paired)
        lines += ["", "### Same wall clock: Lighthouse's final loss against dense at that time", ""]
        lines += equal_time_table(by, paired)
    lines += ["", "### Wall clock and throughput per phase", ""] + phase_tables(runs_by_arm)
    lines += ["", "### Passkey retrieval after training (final checkpoint, dense attention)", ""]
    lines += passkey_tables(runs_by_arm, (config["model"].get("passkey") or {}).get("key_digits", 5))
    lines += ["", "### Loss by position after recovery (final validation, dense)", ""] + bucket_table(runs_by_arm)
    if "lighthouse" in runs_by_arm:
        lines += ["", "### Lighthouse attention against dense on the same weights", ""] + lookahead_table(
            runs_by_arm["lighthouse"]
        )
    tokens = {r.arm: r.tokens_per_step for r in runs}
    plots = {
        "val_loss_time": (
            lambda r, s, t: t / 60,
            "wall clock, minutes (jobs back to back)",
            lambda r: None if r.switch_elapsed_s is None else r.switch_elapsed_s / 60,
        ),
        "val_loss_tokens": (
            lambda r, s, t: s * tokens[r.arm] / 1e6,
            "training tokens, millions",
            lambda r: None if r.switch_step is None else r.switch_step * tokens[r.arm] / 1e6,
        ),
    }
    lines += ["", "### Plots", ""]
    for name, (x_of, label, switch_x) in plots.items():
        plot_curves(runs, report_dir / f"{tag}_{name}.png", x_of, label, switch_x)
    plot_curves(
        runs,
        report_dir / f"{tag}_passkey.png",
        *plots["val_loss_tokens"],
        curve=lambda r: r.passkey_curve,
        ylabel="passkey exact match at validation (dense)",
    )
    plot_throughput(runs_by_arm, report_dir / f"{tag}_tokens_per_sec.png")
    plot_buckets(runs_by_arm, report_dir / f"{tag}_loss_by_position.png")
    for name in ("val_loss_time", "val_loss_tokens", "tokens_per_sec", "loss_by_position", "passkey"):
        lines.append(f"![{name}]({tag}_{name}.png)")
    return lines


def check_inputs(outs: list[Path], report_dir: Path) -> None:
    """Refuse, before anything is written, what would make a wrong report: a folder given twice (its section twice),
    two folders of one name (a section's PNGs are ``<folder name>_*.png``: the second's would overwrite the first's,
    and both sections show them), a report folder that is a file."""
    for i, out in enumerate(outs):
        for first in outs[:i]:
            if first.resolve() == out.resolve():
                raise ValueError(f"--out {first} and {out} are the same folder: its section would be there twice")
            name = section_name(out)
            if section_name(first) == name:
                raise ValueError(
                    f"--out {first} and {out} have the same folder name {name!r}, which names a section and its "
                    "PNGs: the second's plots would replace the first's; copy one under another name"
                )
    blocker = next((p for p in (report_dir, *report_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocker == report_dir:
        raise ValueError(f"--report-dir {report_dir} is a file, not a folder")
    if blocker is not None:
        raise ValueError(f"--report-dir {report_dir}: {blocker} is a file, not a folder")


STAGING_PREFIX = ".report-staging-"


def remove_stale_staging(report_dir: Path) -> None:
    """Staging folders of report runs killed mid-write (their process gone) in ``report_dir``; a live run's is kept,
    so two reports written into one folder at once do not pull each other's files away."""
    for folder in report_dir.glob(f"{STAGING_PREFIX}*"):
        pid = folder.name.removeprefix(STAGING_PREFIX)
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, under another user
            pass


def write_all(report_dir: Path, write: Callable[[Path], None]) -> None:
    """``write(folder)`` writes a report's files into ``folder``, a staging folder in ``report_dir``; each is moved
    over its old version (os.replace) only once all are written. A failure while writing leaves the old report as it
    was (a new ``report_dir`` not made), never old files beside new ones. README.md goes last."""
    made = [p for p in (report_dir, *report_dir.parents) if not p.exists()]
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(report_dir)
    staging = report_dir / f"{STAGING_PREFIX}{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)  # a killed run's, should this process id come again
        staging.mkdir()
        write(staging)
        files = sorted(staging.iterdir(), key=lambda p: (p.name == "README.md", p.name))
        blocked = next((report_dir / p.name for p in files if (report_dir / p.name).is_dir()), None)
        if blocked is not None:  # os.replace would fail there, after the files before it were moved
            raise ValueError(
                f"--report-dir {report_dir}: {blocked} is a folder where the report writes a file; nothing was written"
            )
        for p in files:
            os.replace(p, report_dir / p.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # deepest first; only those this call made, and still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    staging.rmdir()


def build_report(outs: list[Path], report_dir: Path) -> Path:
    """Write ``report_dir/README.md`` (one section per comparison folder) and its PNGs; returns the markdown path.
    Every folder is loaded before anything is written, and the files are written all or none (write_all)."""
    import matplotlib

    check_inputs(outs, report_dir)
    matplotlib.use("Agg")
    loaded = [load_comparison(out) for out in outs]

    def write(folder: Path) -> None:
        lines = [
            "# Lighthouse + recovery vs dense",
            "",
            "Built by `python bench/compare.py report` from the run "
            "directories of `bench/compare.py run`. Arms are compared on the dense validation loss.",
            "",
        ]
        for out, comparison in zip(outs, loaded, strict=True):
            lines += section(out, folder, comparison) + [""]
        (folder / "README.md").write_text("\n".join(lines))

    write_all(report_dir, write)
    return report_dir / "README.md"
