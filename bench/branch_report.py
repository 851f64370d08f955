"""The comparison's report: markdown and PNGs aggregated over every archived seed of bench/branch.py, one design
and plan per report (it refuses seeds of different plans).

    python bench/branch.py report --runs bench/report/runs/branch_32k-seed*.tgz --report-dir bench/report/branch
    python bench/branch.py report --runs bench/report/runs/branch_32k-scratch-seed*.tgz \
        --report-dir bench/report/scratch

The arms are compared on the final evaluation's dense loss (the mean of the per-window losses over the same
validation windows in every arm). Two intervals per comparison:

- over seeds (the result): the mean paired difference of the arms' final losses, with its 95 % Student-t interval
  (n - 1 degrees of freedom). A result is called only where this interval excludes 0;
- over windows (a check of the evaluation's own noise): per window, the difference averaged over seeds, with its
  95 % t-interval over windows. It leaves out the seed-to-seed spread, so it is narrower and never makes the call.

Recall is reported but no call depends on it (a pilot of 750 dense steps of branch_32k.yaml, H200, 2026-12-02,
left it at chance in every distance bin). Wall clock counts each job from its start to its exit (start-up,
compilation, validation, checkpoints; gaps between time-limited jobs left out); "training only" is steps times the
steady-state step time of ThroughputRecorder. A run trained twice (its machine went with its checkpoints) is shown
beside its set-aside attempt: how far two realizations of one seed drift apart, the noise floor under any
difference between arms of one seed.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
from branch import ARMS, SPARSE_ARMS, design_arms, from_scratch
from branch_seeds import RECALL_METRICS, Arm, SeedRun, load_seeds
from report import f, minutes, write_all
from student_t import call, t_interval

ARM_LABEL = {
    "D": "D (dense)",
    "LH": "LH (Lighthouse + recovery)",
    "LHc": "LHc (causal selection + recovery)",
    "E": "E (dense, equal time)",
}
COLORS = {"warmup": "tab:gray", "D": "tab:blue", "LH": "tab:orange", "LHc": "tab:red", "E": "tab:green"}
PAIRS = (("LH", "D"), ("LH", "E"), ("LHc", "D"), ("LHc", "LH"))


# ---- tables -------------------------------------------------------------------------------------------------------
def shown_arms(seeds: list[SeedRun]) -> list[str]:
    """The design's arms, and an added arm (LHc; E from scratch) where some seed trained it."""
    return [a for a in ARMS if any(a in design_arms(s.plan) or a in s.arms for s in seeds)]


def shown_pairs(seeds: list[SeedRun]) -> list[tuple[str, str]]:
    arms = shown_arms(seeds)
    return [(a, b) for a, b in PAIRS if a in arms and b in arms]


def signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


def mean_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def warmup_deterministic(seed: SeedRun) -> bool:
    """Whether every launch of the shared warm-up ran with trainer.deterministic, as resolved (a `-- --trainer.
    deterministic false` after branch.py's config turns it off); branch.py's own config where no launch saved one."""
    launches = [c for where, c in seed.resolved.items() if where.startswith("warmup/")] or [seed.config]
    return all(bool((c.get("trainer") or {}).get("deterministic")) for c in launches)


def devices_said(runs: list[tuple[SeedRun, Arm]]) -> str:
    """ "device X", and the runs that ran elsewhere than their seed's plan says (a seed can span machines)."""
    planned = sorted({s.plan.get("device", "?") for s, _ in runs})
    elsewhere: dict[tuple[str, str], list[int]] = {}
    for s, run in runs:
        for device in sorted(run.devices - {s.plan.get("device")}):
            elsewhere.setdefault((run.name, device), []).append(s.seed)
    said = [
        f"{name} of seed{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} on {device}"
        for (name, device), ids in elsewhere.items()
    ]
    return f"device {', '.join(planned)}" + (f" ({'; '.join(said)})" if said else "")


def setup_lines(seeds: list[SeedRun]) -> list[str]:
    s0 = seeds[0]
    plan, config = s0.plan, s0.config
    arch, data = config["model"]["arch"], config["data"]
    from lighthouse.model.config import FLAVORS

    sizes = {**FLAVORS.get(arch.get("flavor") or "", {}), **{k: v for k, v in arch.items() if v is not None}}
    lh = arch.get("lighthouse", {})
    arms = shown_arms(seeds)
    runs = [(s, run) for s in seeds for run in [s.warmup, *s.arms.values()] if run is not None]
    dates = sorted({s.plan.get("started", "?")[:10] for s in seeds} | {day for _, run in runs for day in run.days})
    return [
        f"- Model: `{arch.get('flavor', 'custom')}` flavour (dim {sizes.get('dim', '-')}, {sizes.get('n_layers', '-')} "
        f"layers, {sizes.get('n_heads', '-')} heads, dense layers {sizes.get('dense_layers', '-')}), Lighthouse "
        f"L={lh.get('levels')}, p={lh.get('pooling_factor')}, K={lh.get('topk')}; "
        f"{data.get('tokenizer')} tokens, corpus `{data.get('corpus')}`, context {data['seq_len']}, batch "
        f"{data.get('batch_size')}, recall windows {data.get('recall_fraction', 0):.0%} of training windows.",
        (
            "- Plan: from scratch, every arm from step 0 with the seed's init and data order (no shared run); "
            if from_scratch(plan)
            else f"- Plan: shared dense warm-up to W={plan['warmup']}; "
        )
        + f"D dense to S={plan['steps']}; LH Lighthouse to the switch at {plan['switch_step']} ({plan['share']:.1%} "
        "of S), dense to S. "
        + ("LHc the same with the causal selection. " if "LHc" in arms else "")
        + (
            "E dense with the "
            + ("whole LR schedule, its warm-up included," if from_scratch(plan) else "rest of the LR schedule")
            + " fitted into the time LH took (steps per seed below). "
            if "E" in arms
            else ""
        )
        + f"Validation every {plan['val_every']} steps; final evaluation on {plan['eval_windows']} validation "
        "windows (dense).",
        f"- Seeds {[s.seed for s in seeds]} (init and data order); {devices_said(runs)}; "
        f"run {dates[0]}{' to ' + dates[-1] if dates[-1] != dates[0] else ''}; config `{plan['config']}`.",
    ]


def seed_table(seeds: list[SeedRun]) -> list[str]:
    arms, pairs = shown_arms(seeds), shown_pairs(seeds)
    branched = not from_scratch(seeds[0].plan)  # only a shared warm-up has an early-drop check
    with_e = "E" in arms
    rows = [
        "| seed | "
        + ("early drop by W (loss 0-256 / later) | " if branched else "")
        + " | ".join(arms)
        + (" | E steps after W" if branched else " | E steps" if with_e else "")
        + " | "
        + " | ".join(f"{a} - {b}" for a, b in pairs)
        + " |",
        "|---" * (len(arms) + len(pairs) + 1 + with_e + branched) + "|",
    ]
    for s in seeds:
        check = s.warmup_check or {}
        drop = (
            "-"
            if check.get("drop") is None
            else f"{'yes' if check['drop'] else 'NO'} ({f(check['early_loss'], 3)} / {f(check['late_loss'], 3)})"
        )
        loss = {a: s.final_loss(a) if s.evaluated(a) else None for a in ARMS}
        diff = {p: None if None in (loss[p[0]], loss[p[1]]) else loss[p[0]] - loss[p[1]] for p in pairs}
        e_steps = (s.equal_time or {}).get("e_steps")
        rows.append(
            f"| {s.seed} | "
            + (f"{drop} | " if branched else "")
            + " | ".join(f(loss[a]) for a in arms)
            + (f" | {e_steps or '-'}" if with_e else "")
            + " | "
            + " | ".join(signed(diff[p]) for p in pairs)
            + " |"
        )
    return rows + [
        "",
        "Final loss: mean dense loss over the final evaluation's windows (the same windows in every arm and seed)."
        + (
            " Early drop: the warm-up's validation loss at positions 1k-4k (or the last range) below that at 0-256."
            if branched
            else ""
        ),
    ]


def window_differences(seeds: list[SeedRun], a: str, b: str) -> np.ndarray:
    """Per window (of the windows every seed evaluated), the a - b loss difference averaged over seeds."""
    per_seed = []
    for s in seeds:
        wa, wb = s.arms[a].window_losses, s.arms[b].window_losses  # on the same windows: load_seeds checked
        per_seed.append({w: x - y for w, x, y in zip(wa["window_ids"], wa["losses"], wb["losses"], strict=True)})
    common = sorted(set.intersection(*(set(d) for d in per_seed)))
    return np.array([statistics.fmean(d[w] for d in per_seed) for w in common])


def interval_table(seeds: list[SeedRun]) -> list[str]:
    rows = [
        "| comparison | mean paired difference | 95 % t-interval over seeds | seeds | call | window-level mean | "
        "95 % t-interval over windows | windows |",
        "|---" * 8 + "|",
    ]
    for a, b in shown_pairs(seeds):
        both = [s for s in seeds if s.evaluated(a) and s.evaluated(b)]
        if not both:
            rows.append(f"| {a} - {b} | - | - | 0 | no seed has both arms | - | - | - |")
            continue
        mean, lo, hi = t_interval([s.final_loss(a) - s.final_loss(b) for s in both])
        per_window = window_differences(both, a, b)
        wm, wlo, whi = t_interval(per_window) if len(per_window) else (None, None, None)
        seed_ci = "-" if lo is None else f"[{lo:+.4f}, {hi:+.4f}]"
        window_ci = "-" if wlo is None else f"[{wlo:+.4f}, {whi:+.4f}]"
        rows.append(
            f"| {a} - {b} | {mean:+.4f} | {seed_ci} | {len(both)} | {call(mean, lo, hi, a)} | {signed(wm)} | "
            f"{window_ci} | {len(per_window)} |"
        )
    return rows + [
        "",
        "Negative: the first arm's final loss is lower. Called only where the interval over seeds excludes 0; the "
        "window-level interval (differences averaged over seeds, interval over windows) measures only the evaluation "
        "windows' sampling, not the seed-to-seed spread, and makes no call.",
    ]


def wall_rows(seeds: list[SeedRun]) -> list[tuple[str, list[SeedRun], list[Arm]]]:
    """(label, seeds, runs) per row of the wall-clock table: finished runs only (a run cut short would count its
    partial time and its planned steps), and the shared warm-up split by its setting of trainer.deterministic
    (the deterministic one runs ~2x slower: branch.py --deterministic-cost)."""
    start = "0" if from_scratch(seeds[0].plan) else "W"  # where the arms' rows begin
    rows = []
    for deterministic in (False, True):
        group = [s for s in seeds if s.warmup is not None and warmup_deterministic(s) == deterministic]
        if group:
            label = "shared dense warm-up (0-W)" + (", deterministic" if deterministic else "")
            rows.append((label, group, [s.warmup for s in group]))
    for name in ARMS:
        group = [s for s in seeds if s.evaluated(name)]
        if group:
            rows.append((f"{ARM_LABEL[name]} ({start}-end)", group, [s.arms[name] for s in group]))
    return rows


def wall_table(seeds: list[SeedRun]) -> list[str]:
    rows = [
        "| run | seeds | Lighthouse phase, min | dense phase, min | total, min | jobs | training only: Lighthouse, "
        "min | dense, min | tokens/s: Lighthouse | tokens/s: dense |",
        "|---" * 10 + "|",
    ]
    for label, group, arms in wall_rows(seeds):
        cell = {
            (k, ph): mean_of([getattr(a, k).get(ph) for a in arms])
            for k in ("wall_s", "train_s", "tokens_per_s")
            for ph in ("lighthouse", "dense")
        }
        total = mean_of([sum(a.wall_s.values()) for a in arms])
        rows.append(
            f"| {label} | {', '.join(str(s.seed) for s in group)} | {minutes(cell['wall_s', 'lighthouse'])} | "
            f"{minutes(cell['wall_s', 'dense'])} | {minutes(total)} | {statistics.fmean(a.jobs for a in arms):.1f} | "
            f"{minutes(cell['train_s', 'lighthouse'])} | {minutes(cell['train_s', 'dense'])} | "
            f"{f(cell['tokens_per_s', 'lighthouse'], 0)} | {f(cell['tokens_per_s', 'dense'], 0)} |"
        )
    rule = seeds[0].equal_time
    note = (
        ""
        if rule is None
        else f" E's length: {rule['rule']} (seed {seeds[0].seed}: LH {rule['lh_time_s']:.0f} s of training, D's "
        f"dense step {rule['d_dense_step_s']:.3f} s, so {rule['e_steps']} steps). E is matched to LH on training "
        "only (what a run without this report's validations would cost), so its jobs end sooner than LH's: LH "
        "validates more often over its longer step count, with both attentions in its Lighthouse phase, and starts "
        "up longer."
    )
    return rows + [
        "",
        "Means over the seeds named, runs that finished (with their final evaluation) only. Phase times: each job "
        "from start to exit (start-up, compilation, validation, checkpoints); training only: steps x steady-state "
        "step time." + note,
    ]


def recall_table(seeds: list[SeedRun]) -> list[str]:
    arms = shown_arms(seeds)
    bins = []
    for s in seeds:
        for a in (a for a in arms if s.evaluated(a)):
            for label in (s.arms[a].recall or {}).get("bins", {}):
                if label not in bins:
                    bins.append(label)
    rows = ["| distance | " + " | ".join(ARM_LABEL[a] for a in arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for label in bins:
        cells = []
        for a in arms:
            got = [
                s.arms[a].recall["bins"][label]
                for s in seeds
                if s.evaluated(a) and label in (s.arms[a].recall or {}).get("bins", {})
            ]
            cells.append("-" if not got else " / ".join(f(mean_of([g[k] for g in got]), 3) for k in RECALL_METRICS))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return rows + [
        "",
        "Per cell: value-digit accuracy / exact match / digit log-loss, means over seeds, final checkpoints, dense "
        "attention (chance: 0.1 and ln 10 = 2.303); from the final recall evaluation, or where a seed left it out "
        "(--no-final-recall), from the validation at the arm's last step, which scores the same windows and pairs "
        "(E's last step has no validation). Not part of any call: recall was still at chance after 750 "
        "dense steps of branch_32k.yaml in the pilot (H200, 2026-12-02).",
    ]


def position_table(seeds: list[SeedRun]) -> list[str]:
    evaluated = [s for s in seeds if s.evaluated("D")]
    buckets = evaluated[0].arms["D"].window_losses["buckets"]
    arms, pairs = shown_arms(seeds), shown_pairs(seeds)

    def by_bucket(s: SeedRun, a: str) -> np.ndarray:
        return np.mean(s.arms[a].window_losses["bucket_losses"], axis=0)

    means = {a: [by_bucket(s, a) for s in seeds if s.evaluated(a)] for a in arms}
    # A gap is paired like the intervals: per seed that has both arms, then averaged. Subtracting two arms' means
    # over different seed sets would carry the seeds' own spread into the gap.
    gaps = {
        (a, b): [by_bucket(s, a) - by_bucket(s, b) for s in seeds if s.evaluated(a) and s.evaluated(b)]
        for a, b in pairs
    }

    def mean_cell(values: list[np.ndarray], i: int, text) -> str:
        return "-" if not values else text(float(np.mean([v[i] for v in values])))

    rows = [
        "| positions | "
        + " | ".join(f"{a} ({len(means[a])})" for a in arms)
        + " | "
        + " | ".join(f"{a} - {b} ({len(gaps[a, b])})" for a, b in pairs)
        + " |",
        "|---" * (len(arms) + len(pairs) + 1) + "|",
    ]
    for i, name in enumerate(buckets):
        rows.append(
            f"| {name} | "
            + " | ".join(mean_cell(means[a], i, f) for a in arms)
            + " | "
            + " | ".join(mean_cell(gaps[p], i, signed) for p in pairs)
            + " |"
        )
    return rows + [
        "",
        "Final evaluation, dense: mean loss per position range over windows; an arm's column averages the seeds that "
        "evaluated it, a difference the paired per-seed differences over the seeds that evaluated both arms "
        "(how many: in the header).",
    ]


def lookahead_table(seeds: list[SeedRun]) -> list[str]:
    rows = [
        "| seed | arm | first half: real / replaced second half | difference +- s.e. | single positions: real / "
        "replaced rest of tile | difference +- s.e. | Lighthouse - dense loss | windows |",
        "|---" * 8 + "|",
    ]
    for s, arm in ((s, a) for s in seeds for a in SPARSE_ARMS if a in s.arms):
        p = s.arms[arm].lookahead
        if p is None:
            rows.append(f"| {s.seed} | {arm} | - | - | - | - | - | - |")
            continue
        cut = (
            ("-", "-")
            if "cut_difference" not in p
            else (
                f"{f(p['cut_real'])} / {f(p['cut_replaced'])}",
                f"{p['cut_difference']:+.4f} +- {p['cut_standard_error']:.4f}",
            )
        )
        rows.append(
            f"| {s.seed} | {arm} | {f(p['first_half_real'])} / {f(p['first_half_replaced'])} | "
            f"{p['difference']:+.4f} +- {p['standard_error']:.4f} | {cut[0]} | {cut[1]} | "
            f"{signed(p['lighthouse_loss'] - p['dense_loss'])} | {p['windows']} |"
        )
    return rows + [
        "",
        "lighthouse.eval.lookahead on the arm's checkpoint at the switch, its own Lighthouse attention: the loss of "
        "the first half of every selection tile with its real second half and with that half replaced by another "
        "window's text; and (probes since 2026-12-02) the loss at one random position per tile with the rest of its "
        "tile replaced. > 0 is what looking ahead inside a tile is worth. The first-half measurement cannot see a "
        "short-range look-ahead (only the positions just before a tile's middle lose their near future), so a '-' in "
        "the single-position columns leaves the look-ahead unmeasured. Last column: the same weights' loss with "
        "Lighthouse attention minus with dense attention. A row of '-': not measured (the arm's checkpoint at the "
        "switch went with its machine before the probe ran; training the arm again would give another realization "
        "of it, not a probe of this one).",
    ]


def switch_table(seeds: list[SeedRun]) -> list[str]:
    """LH's validation loss with its own (Lighthouse) attention and read densely at the switch, beside D's."""
    rows = [
        "| seed | arm | step | Lighthouse attention | dense attention | D, dense | arm (Lighthouse) - D |",
        "|---" * 7 + "|",
    ]
    for s, arm in ((s, a) for s in seeds for a in SPARSE_ARMS if a in s.arms):
        lh, d = s.arms[arm], s.arms.get("D")
        step = s.plan["switch_step"]
        sparse = lh.sparse_curve.get(step)
        lh_dense = next((v for st, _, v in lh.curve if st == step), None)
        d_dense = next((v for st, _, v in d.curve if st == step), None) if d else None
        gap = None if sparse is None or d_dense is None else sparse - d_dense
        rows.append(f"| {s.seed} | {arm} | {step} | {f(sparse)} | {f(lh_dense)} | {f(d_dense)} | {signed(gap)} |")
    return rows + [
        "",
        "Validation loss at the switch. A Lighthouse phase far below the dense arm at the same step, while the same "
        "weights read densely are far above it, is what a look-ahead the layers learned to use looks like "
        "(bench/leak_iid.py shows the selection lets a model predict independent random tokens).",
    ]


def own_attention_losses(arm: Arm) -> dict[int, float]:
    """Validation loss per step with the run's own attention: Lighthouse in its sparse phase, dense after it."""
    return {**{step: v for step, _, v in arm.curve}, **arm.sparse_curve}


def realization_table(seeds: list[SeedRun]) -> list[str]:
    """Each set-aside attempt against the run kept: same seed, init, data order and plan, trained twice."""
    rows = [
        "| seed | run | attempt | steps compared | last common step | kept | attempt | attempt - kept | "
        "largest abs. difference (step) |",
        "|---" * 9 + "|",
    ]
    for s in seeds:
        for name, attempts in s.attempts.items():
            kept = s.warmup if name == "warmup" else s.arms.get(name)
            if kept is None:
                continue
            mine = own_attention_losses(kept)
            for n, attempt in attempts:
                theirs = own_attention_losses(attempt)
                common = sorted(set(mine) & set(theirs))
                if not common:
                    rows.append(f"| {s.seed} | {name} | {n} | 0 | - | - | - | - | - |")
                    continue
                last = common[-1]
                worst = max(common, key=lambda st: abs(theirs[st] - mine[st]))
                rows.append(
                    f"| {s.seed} | {name} | {n} | {len(common)} | {last} | {f(mine[last])} | {f(theirs[last])} | "
                    f"{signed(theirs[last] - mine[last])} | {abs(theirs[worst] - mine[worst]):.4f} ({worst}) |"
                )
    return rows + [
        "",
        "A run trained again after its machine went with its checkpoints (the earlier attempt kept as "
        "`<run>.attempt-<n>`): validation loss with the run's own attention at the steps both reached. The warm-up "
        "is deterministic (its re-derivation is checked bit for bit), so its rows read 0; an arm's rows measure how "
        "far two realizations of one seed drift apart through non-deterministic kernels alone, the noise floor a "
        "difference between arms of one seed has to clear.",
    ]


# ---- plots --------------------------------------------------------------------------------------------------------
def plot_curves(seeds: list[SeedRun], path: Path, by_time: bool) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    labelled = set()

    def x(s: SeedRun, step: int, t: float) -> float:
        return t / 60 if by_time else step * s.tokens_per_step / 1e6

    for s in seeds:
        for name, arm in [("warmup", s.warmup), *((a, s.arms.get(a)) for a in ARMS)]:
            if arm is None or not arm.curve:
                continue
            curve = arm.curve
            if name != "warmup" and s.warmup is not None and s.warmup.curve:
                curve = [s.warmup.curve[-1], *curve]  # each arm continues from the shared point at W
            label = ("shared dense warm-up" if name == "warmup" else ARM_LABEL[name]) if name not in labelled else None
            labelled.add(name)
            ax.plot(
                [x(s, st, t) for st, t, _ in curve],
                [v for *_, v in curve],
                marker="o",
                ms=2.5,
                color=COLORS[name],
                alpha=0.8,
                label=label,
            )
            sparse = [(st, t, arm.sparse_curve[st]) for st, t, _ in arm.curve if st in arm.sparse_curve]
            if sparse:  # the Lighthouse phase's own validation loss, which the report compares at the switch
                label = f"{ARM_LABEL[name]}, read with Lighthouse attention"
                ax.plot(
                    [x(s, st, t) for st, t, _ in sparse],
                    [v for *_, v in sparse],
                    ls="--",
                    marker="o",
                    ms=2.5,
                    color=COLORS[name],
                    alpha=0.8,
                    label=label if label not in labelled else None,
                )
                labelled.add(label)
        marks = []
        if not from_scratch(s.plan):
            at_w = s.warmup.curve[-1][1] if s.warmup and s.warmup.curve else None
            marks.append((s.plan["warmup"], at_w, "W (branch)", "--"))
        lh = next((s.arms[a] for a in SPARSE_ARMS if a in s.arms), None)
        at_switch = [t for st, t, _ in (lh.curve if lh else []) if st == s.plan["switch_step"]]
        marks.append((s.plan["switch_step"], at_switch[0] if at_switch else None, "LH switch to dense", ":"))
        for step, t, label, style in marks:
            if by_time and t is None:
                continue
            ax.axvline(
                x(s, step, t or 0.0), color="k", ls=style, lw=0.8, label=label if label not in labelled else None
            )
            labelled.add(label)
    ax.set_xlabel("wall clock, minutes (jobs back to back)" if by_time else "training tokens, millions")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    # Below the axes: inside, it covered the arms' ends, where the comparison is read.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # the figure grows to hold the legend
    plt.close(fig)


# ---- the report ---------------------------------------------------------------------------------------------------
def build_report(paths: list[Path], report_dir: Path, scratch: Path | None = None) -> Path:
    """Write ``report_dir/README.md`` and its PNGs from the seed folders or archives in ``paths``; every input is
    checked before anything is written (load_seeds refuses what does not belong, so a bad input never leaves a
    report of the rest), and the files are written all or none (report.write_all)."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    if report_dir.exists() and not report_dir.is_dir():
        raise ValueError(f"--report-dir {report_dir} is a file, not a folder")
    with tempfile.TemporaryDirectory() as tmp:
        seeds = load_seeds(paths, Path(scratch or tmp))
        if not seeds:
            raise ValueError("no seed folder or archive given")

        def stage(folder: Path) -> None:
            # section() writes the PNGs into the staging folder it is given; write_all publishes the folder whole or
            # not at all, so a plain write is enough in it.
            (folder / "README.md").write_text("\n".join(section(seeds, folder)) + "\n")

        write_all(report_dir, stage)
    return report_dir / "README.md"


def section(seeds: list[SeedRun], report_dir: Path, tag: str = "branch") -> list[str]:
    done = [s for s in seeds if s.complete]
    title = (
        "# From-scratch comparison: Lighthouse + recovery against dense, every arm from step 0"
        if from_scratch(seeds[0].plan)
        else "# Branch comparison: Lighthouse + recovery against dense, from one shared dense warm-up"
    )
    built = f"Built by `python bench/branch.py report` from {len(seeds)} seed folder(s)."
    # Per arm, not only "complete": a seed run for part of the design on purpose (D and LH at 65536) is not broken.
    per_arm = ", ".join(f"{a} {sum(s.evaluated(a) for s in seeds)}" for a in shown_arms(seeds))
    built += (
        f" Seeds with a final evaluation, per arm: {per_arm}; with every arm of the design "
        f"({', '.join(design_arms(seeds[0].plan))}): {len(done)}."
    )
    lines = [title, "", built, ""]
    lines += setup_lines(seeds)
    missing = [s.seed for s in seeds if not s.complete]
    if missing:
        lines += [
            f"- Seeds without every arm of the design: {missing} (each comparison uses the seeds that finished both "
            f"of its arms; arms without a final evaluation: "
            + ", ".join(
                f"seed {s.seed}: {[a for a in design_arms(s.plan) if not s.evaluated(a)]}"
                for s in seeds
                if not s.complete
            )
            + ")."
        ]
    lines += ["", "### Final loss per seed", ""] + seed_table(seeds)
    if any(s.evaluated(a) and s.evaluated(b) for s in seeds for a, b in PAIRS):
        lines += ["", "### Paired differences", ""] + interval_table(seeds)
    if any(s.evaluated(a) and s.arms[a].recall for s in seeds for a in ARMS):
        lines += ["", "### Recall after recovery (final checkpoints, dense)", ""] + recall_table(seeds)
    if any(s.evaluated("D") for s in seeds):
        lines += ["", "### Loss by position after recovery", ""] + position_table(seeds)
    if any(a in s.arms for s in seeds for a in SPARSE_ARMS):
        lines += ["", "### At the switch", ""] + switch_table(seeds)
        lines += ["", "### Look-ahead at the switch", ""] + lookahead_table(seeds)
    if any(s.attempts for s in seeds):
        lines += ["", "### Repeat realizations", ""] + realization_table(seeds)
    lines += ["", "### Wall clock and throughput per phase", ""] + wall_table(seeds)
    lines += ["", "### Plots", ""]
    for name, by_time in (("val_loss_tokens", False), ("val_loss_time", True)):
        plot_curves(seeds, report_dir / f"{tag}_{name}.png", by_time)
        lines.append(f"![{name}]({tag}_{name}.png)")
    return lines
