"""Plot runs to PNG: ``python -m lighthouse.eval.plot RUN_DIR [RUN_DIR ...] [--out DIR]``.

Writes ``loss.png`` (training and validation loss against steps and against training time, the stage switch
marked), ``throughput.png`` (tokens/s over the run and per stage) and ``loss_by_position.png`` (validation loss
by position in the window at the end of each stage). Several runs are drawn into the same figures. A RUN_DIR may
also be a folder of runs (``logs/demo``): all its runs are drawn. Needs matplotlib (``pip install -e .[report]``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from lighthouse.eval.run_logs import Run, Series, find_runs, read_run
from lighthouse.tool_args import entry_point, output_folder

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
STAGE_NAMES = {1: "stage 1 (Lighthouse)", 2: "stage 2 (dense)"}


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard's exponential moving average, debiased so the first points are not pulled towards 0."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def _time_axis(runs: list[Run]) -> tuple[float, str]:
    longest = max((max(run.training_time(run.series("train/loss")), default=0.0) for run in runs), default=0.0)
    return (3600.0, "training time (hours)") if longest > 2 * 3600 else (60.0, "training time (minutes)")


def _mark_switch(ax, x: float | None, color: str, text: bool, top: bool = False) -> None:
    """A dashed line at the switch, labelled at the bottom (or the top) of the axes, clear of the legend."""
    if x is None:
        return
    ax.axvline(x, color=color, linestyle="--", linewidth=1, alpha=0.8)
    if text:
        ax.annotate(
            "stage 2 (dense) →",
            xy=(x, 1 if top else 0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -12 if top else 6),
            textcoords="offset points",
            fontsize=8,
            color=color,
        )


def _switch_time(run: Run, step: int | None, scale: float) -> float | None:
    if step is None:
        return None
    loss = run.series("train/loss")
    times = run.training_time(loss)
    after = [t for s, t in zip(loss.steps, times, strict=True) if s >= step]
    return after[0] / scale if after else None


def val_tag(run: Run, tag: str = "val/loss") -> str:
    """The dense variant of a validation tag where the run logs one (``val/loss_dense``...): Lighthouse selection
    sees a little of the future inside a tile, so its own validation loss flatters stage 1."""
    dense = tag.replace("val/loss", "val/loss_dense", 1)
    return dense if any(t == dense or t.startswith(dense + "/") for t in run.scalars) else tag


def _loss_lines(ax, run: Run, color: str, xs_train, xs_val, label: str) -> None:
    train, val = run.series("train/loss"), run.series(val_tag(run))
    if train.steps:
        ax.plot(xs_train, train.values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(xs_train, smooth(train.values), color=color, linewidth=1.6, label=f"{label} train")
    if val.steps:
        ax.plot(
            xs_val,
            val.values,
            color=color,
            marker="o",
            markersize=4,
            linestyle=":",
            linewidth=1.2,
            label=f"{label} val{' (dense)' if val_tag(run) != 'val/loss' else ''}",
        )


def plot_loss(runs: list[Run], labels: list[str], out: Path) -> Path:
    import matplotlib.pyplot as plt

    scale, time_label = _time_axis(runs)
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = COLORS[i % len(COLORS)]
        train, val = run.series("train/loss"), run.series(val_tag(run))
        _loss_lines(by_step, run, color, train.steps, val.steps, label)
        _loss_lines(
            by_time,
            run,
            color,
            [t / scale for t in run.training_time(train)],
            [t / scale for t in run.training_time(val)],
            label,
        )
        switch = run.stage_switch_step()
        _mark_switch(by_step, switch, color, text=i == 0)
        _mark_switch(by_time, _switch_time(run, switch, scale), color, text=i == 0)
    by_step.set_xlabel("optimizer step")
    by_time.set_xlabel(time_label)
    by_step.set_ylabel("loss (nats per token)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    _legend(by_step, loc="upper right")
    fig.suptitle("Training and validation loss (train: raw, faint; smoothed, solid)")
    return _save(fig, out / "loss.png")


def _stage_rates(run: Run) -> dict[int, list[float]]:
    rates: dict[int, list[float]] = {}
    for record in run.throughput:
        if "tokens_per_sec" in record:
            rates.setdefault(int(record.get("stage", 1)), []).append(record["tokens_per_sec"])
    return rates


def plot_throughput(runs: list[Run], labels: list[str], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (over_steps, per_stage) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    bar_width = 0.8 / max(1, len(runs))
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = COLORS[i % len(COLORS)]
        for stage, marker in ((1, "o"), (2, "s")):
            records = [r for r in run.throughput if int(r.get("stage", 1)) == stage and "tokens_per_sec" in r]
            if records:
                # A record's step counts the optimizer steps done, as every logged step does (train/logger.py).
                over_steps.plot(
                    [r["step"] for r in records],
                    [r["tokens_per_sec"] for r in records],
                    color=color,
                    marker=marker,
                    markersize=4,
                    linewidth=1,
                    label=f"{label} {STAGE_NAMES[stage]}",
                )
        _mark_switch(over_steps, run.stage_switch_step(), color, text=i == 0, top=True)
        rates = _stage_rates(run)
        stages = sorted(rates)
        medians = [statistics.median(rates[s]) for s in stages]
        xs = [s - 1 + (i - (len(runs) - 1) / 2) * bar_width for s in stages]
        bars = per_stage.bar(xs, medians, width=bar_width, color=color, label=label)
        per_stage.bar_label(bars, labels=[f"{m:,.0f}" for m in medians], fontsize=8)
    over_steps.set_xlabel("optimizer step")
    over_steps.set_ylabel("tokens / s (all devices)")
    _legend(over_steps, loc="best")
    per_stage.set_xticks([0, 1], [STAGE_NAMES[1], STAGE_NAMES[2]])
    per_stage.set_ylabel("median tokens / s")
    _legend(per_stage)
    for ax in (over_steps, per_stage):
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Throughput (warm-up, validation and checkpoint steps left out)")
    return _save(fig, out / "throughput.png")


def _value_before(series: Series, step: int | None) -> tuple[int, float] | None:
    """The last point at or before ``step`` (the last point when ``step`` is None)."""
    points = [(s, v) for s, v in zip(series.steps, series.values, strict=True) if step is None or s <= step]
    return points[-1] if points else None


def plot_loss_by_position(runs: list[Run], labels: list[str], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = COLORS[i % len(COLORS)]
        buckets = run.position_buckets()
        if not buckets:  # no validation ran yet: nothing to draw for this run (missing() says so)
            continue
        switch = run.stage_switch_step()
        moments = [("end of stage 1", switch, "--")] if switch is not None else []
        moments.append(("final", None, "-"))
        for name, before, style in moments:
            points = [_value_before(run.series(f"{val_tag(run, 'val/loss_pos')}/{b}"), before) for b in buckets]
            if all(p is not None for p in points):
                step = max(p[0] for p in points)
                ax.plot(
                    buckets,
                    [p[1] for p in points],
                    color=color,
                    linestyle=style,
                    marker="o",
                    markersize=4,
                    label=f"{label} {name} (step {step})",
                )
    ax.set_xlabel("token position in the window")
    ax.set_ylabel("validation loss (nats per token)")
    ax.grid(alpha=0.3)
    _legend(ax)
    fig.suptitle("Validation loss by position: falling loss at late positions = long context in use")
    return _save(fig, out / "loss_by_position.png")


def _legend(ax, **kwargs) -> None:
    """A legend where something was drawn (a run without validation leaves loss_by_position.png empty)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kwargs)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def has_loss(run: Run) -> bool:
    """Whether ``run`` logged a training or validation loss: what a Lighthouse run logs first, and loss.png draws."""
    return bool(run.series("train/loss").steps or run.series(val_tag(run)).steps)


def missing(run: Run) -> list[str]:
    """What a run has not logged (yet), each with the figure that lacks it: said instead of failing."""
    gaps = []
    train, val = run.series("train/loss").steps, run.series(val_tag(run)).steps
    if not train and not val:
        gaps.append("no training or validation loss (train/loss, val/loss): loss.png has no curve of it")
    elif not train:
        gaps.append("no training loss (train/loss): loss.png shows the validation loss only")
    elif not val:
        gaps.append("no validation point (val/loss): loss.png shows the training loss only")
    if not run.position_buckets():
        gaps.append("no validation loss by position (val/loss_pos): loss_by_position.png is empty")
    if not run.throughput:
        gaps.append("no throughput.jsonl records: throughput.png is empty")
    return gaps


def plot_runs(paths: list[str | Path], out: str | Path | None = None, labels: list[str] | None = None) -> list[Path]:
    """Draw the runs at ``paths`` into ``out`` (default: ``plots`` in the innermost folder holding every run: the
    run's own for one run, ``logs/demo/plots`` for the runs of logs/demo; never the working directory, which
    may not be the project's).

    A run that has not logged everything yet (no validation so far, an empty or cut-off events file) is drawn
    with what it has, and what is missing is printed to stderr. Runs none of which logged a loss are refused.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    for path in paths:
        if not Path(path).is_dir():
            raise ValueError(f"RUN={str(path)!r} is invalid: not a folder (a run directory or a folder of them)")
    run_dirs = [run for path in paths for run in find_runs(path)]
    if not run_dirs:
        raise ValueError(
            f"RUN={list(map(str, paths))} is invalid: no run directories (folders with TensorBoard event files) there"
        )
    runs = [read_run(path) for path in run_dirs]
    empty = [str(run.path) for run in runs if not run.scalars]
    if len(empty) == len(runs):
        raise ValueError(f"RUN={empty} is invalid: its event files hold no scalars (empty or damaged), nothing to plot")
    if not any(has_loss(run) for run in runs):
        # A run logs train/loss from its first logged step: scalars without any loss are another program's (a
        # foreign TensorBoard folder), and drawing them would leave three empty figures in it.
        tags = sorted({tag for run in runs for tag in run.scalars})
        shown = ", ".join(tags[:4]) + (f" and {len(tags) - 4} more" if len(tags) > 4 else "")
        raise ValueError(
            f"RUN={[str(run.path) for run in runs]} is invalid: no run there logged train/loss or val/loss (the "
            f"scalars there: {shown}), nothing to plot"
        )
    labels = labels or [run.label for run in runs]
    if len(labels) != len(runs):
        raise ValueError(f"--labels={labels} is invalid: it gives {len(labels)} names for {len(runs)} runs")
    flag = "--out" if out is not None else "--out (default: plots in the folder holding the runs)"
    common = Path(os.path.commonpath([os.path.abspath(run) for run in run_dirs]))
    out = output_folder(flag, str(out) if out is not None else str(common / "plots"))
    for run, label in zip(runs, labels, strict=True):
        for gap in missing(run):
            print(f"note: {label}: {gap}", file=sys.stderr)
    return [plot(runs, labels, out) for plot in (plot_loss, plot_throughput, plot_loss_by_position)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lighthouse.eval.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="run directories, or folders of them (e.g. logs/demo)")
    parser.add_argument(
        "--out", help="folder for the PNGs (default: plots in the innermost folder that holds every run given)"
    )
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: <name>/<version>)")
    args = parser.parse_args(argv)
    for path in plot_runs(args.runs, args.out, args.labels):
        print(path)


if __name__ == "__main__":
    entry_point(main)
