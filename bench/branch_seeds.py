"""One seed of bench/branch.py as the report reads it: each arm's validation curve, final evaluation, recall,
look-ahead probe and timing, from a seed folder or its archive (bench/report/runs/*.tgz), and the set of seeds one
report aggregates (one design and plan)."""

from __future__ import annotations

import json
import re
import statistics
import tarfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from branch import ARMS, RUNS, SPARSE_ARMS, design_arms, end_step
from campaign import read_json
from report import elapsed, job_spans, read_logged, split_wall_by_phase
from seed_files import RECALL_METRICS, check_seed_files

from lighthouse.eval.run_logs import launch_configs, read_config, read_json_lines

# What every seed of one report shares (the command-line extras may differ: a work-around, recorded per seed).
SHARED_PLAN = ("steps", "warmup", "share", "switch_step", "val_every", "config", "eval_windows")


@dataclass
class Arm:
    name: str
    curve: list[tuple[int, float, float]]  # (global step, elapsed s from the seed's start, val/loss_dense)
    sparse_curve: dict[int, float]  # global step -> val/loss with the run's own attention, in its Lighthouse phase
    window_losses: dict | None
    recall: dict | None
    lookahead: dict | None
    wall_s: dict[str, float]  # per phase ("lighthouse", "dense"), jobs' time
    train_s: dict[str, float]  # per phase, steps x steady-state step time
    tokens_per_s: dict[str, float]
    jobs: int
    end: int
    devices: frozenset[str] = frozenset()  # the GPUs its jobs ran on (run_devices)
    days: frozenset[str] = frozenset()  # the UTC dates its jobs started on


@dataclass
class SeedRun:
    folder: Path
    seed: int
    plan: dict
    warmup_check: dict | None
    equal_time: dict | None
    config: dict
    warmup: Arm | None
    arms: dict[str, Arm] = field(default_factory=dict)
    # Earlier attempts at a run that its machine took with it (branch.set_aside), per run: (n of .attempt-<n>, Arm).
    attempts: dict[str, list[tuple[int, Arm]]] = field(default_factory=dict)
    # Each launch's config as LightningCLI resolved it (command-line extras included), per file: run/config[.N].yaml.
    resolved: dict[str, dict] = field(default_factory=dict)

    def evaluated(self, arm: str) -> bool:
        """The arm trained to its end and got its final evaluation."""
        return arm in self.arms and self.arms[arm].window_losses is not None

    @property
    def complete(self) -> bool:
        return all(self.evaluated(a) for a in design_arms(self.plan))

    def final_loss(self, arm: str) -> float:
        return float(np.mean(self.arms[arm].window_losses["losses"]))

    @property
    def tokens_per_step(self) -> int:
        data = self.config["data"]
        return data["seq_len"] * data.get("batch_size", 1) * self.config["trainer"].get("accumulate_grad_batches", 1)


def recall_at(logged: dict[str, dict[int, tuple[float, float]]], step: int) -> dict | None:
    """The recall a validation at ``step`` logged, in lighthouse.eval.recall's JSON shape; None without one.

    The validation scores the same windows and pairs as the final recall evaluation (model.recall), with the
    attention the run has at that step: at an arm's end that is dense in every arm, so the two agree (seed 0 of
    branch_32k, where both exist: equal to 1e-7), and the report can leave the final one out (--no-final-recall)."""
    bins: dict[str, dict[str, float]] = {}
    for tag, points in logged.items():
        parts = tag.split("/")
        if len(parts) == 3 and parts[0] == "recall" and parts[2] in RECALL_METRICS and step in points:
            bins.setdefault(parts[1], {})[parts[2]] = points[step][1]
    bins = {b: m for b, m in bins.items() if set(m) == set(RECALL_METRICS)}
    return {"global_step": step, "source": "validation", "bins": bins} if bins else None


# Lightning's hint about Tensor Cores, printed by every fit on a CUDA device that it names.
LIGHTNING_DEVICE_LINE = re.compile(r"You are using a CUDA device \('([^']+)'\)")


def run_devices(run_dir: Path) -> frozenset[str]:
    """The GPUs a run's jobs ran on: named in each launch record since 2026-12-05; for a job before that, the one
    Lightning names in the job's log (a seed's runs can span sessions, and a session's machine is an H200 or H100)."""
    named = {r["device"] for r in read_json_lines(run_dir / "launches.jsonl") if r.get("device")}
    for log in run_dir.glob("launch-*.log"):
        named.update(LIGHTNING_DEVICE_LINE.findall(log.read_text(errors="replace")))
    return frozenset(named)


def run_days(run_dir: Path) -> frozenset[str]:
    """The UTC dates the run's jobs started on (launch records)."""
    starts = [r["start"] for r in read_json_lines(run_dir / "launches.jsonl") if "start" in r]
    return frozenset(datetime.fromtimestamp(t, timezone.utc).date().isoformat() for t in starts)


def load_arm(run_dir: Path, name: str, start: int, end: int, plan: dict, offset_s: float) -> Arm | None:
    """One run of the seed: its validation curve (its steps after ``start``), final evaluation and timing."""
    logged, throughput = read_logged(run_dir)
    if "train/loss" not in logged:
        return None
    # Steps as lighthouse.eval.run_logs reads them: global steps, for runs logged before lighthouse.train.logger's
    # step convention too.
    spans = job_spans(run_dir, logged)
    dense = {s: wv for s, wv in logged.get("val/loss_dense", {}).items() if s > start}
    own = {s: v for s, (_, v) in logged.get("val/loss", {}).items() if s > start}
    switch = plan["switch_step"] if name in SPARSE_ARMS else None

    def phase(step: int) -> str:
        return "lighthouse" if switch is not None and step <= switch else "dense"

    walls = [(w, phase(s)) for s, (w, _) in logged["train/loss"].items()]
    walls += [(w, phase(s)) for s, (w, _) in dense.items()]
    # start -1 (the warm-up) lets a validation at step 0 into its curve; it trains steps 1..W, W of them.
    first = max(start, 0)
    steps = {"lighthouse": (switch - first) if switch else 0, "dense": end - (switch or first)}
    train_s, tokens_per_s = {}, {}
    for ph in ("lighthouse", "dense"):
        mine = [r for r in throughput if (r.get("attention", "sdpa") != "sdpa") == (ph == "lighthouse")]
        if steps[ph] and mine:
            step_s = statistics.fmean(r["step_time_s"] for r in mine)
            train_s[ph] = steps[ph] * step_s
            tokens_per_s[ph] = statistics.fmean(r["tokens_per_sec"] * r["step_time_s"] for r in mine) / step_s
    final = run_dir / "final"
    return Arm(
        name=name,
        curve=[(s, offset_s + elapsed(w, spans), v) for s, (w, v) in sorted(dense.items())],
        sparse_curve={s: v for s, v in own.items() if phase(s) == "lighthouse"},
        window_losses=read_json(final / "window_losses.json"),
        recall=read_json(final / "recall.json") or recall_at(logged, end),
        lookahead=read_json(final / "lookahead.json"),
        wall_s={k: v for k, v in split_wall_by_phase(spans, sorted(walls)).items() if steps[k]},
        train_s=train_s,
        tokens_per_s=tokens_per_s,
        jobs=len(spans),
        end=end,
        devices=run_devices(run_dir),
        days=run_days(run_dir),
    )


def run_config_path(folder: Path) -> Path | None:
    """The config of the seed's first run (the warm-up, or from scratch D): model and data are every run's."""
    return next((p for p in (folder / "configs" / f"{r}.yaml" for r in RUNS) if p.is_file()), None)


def read_yaml(path: Path) -> dict:
    """A config the seed's runs wrote, refused with its path where it is not a YAML mapping."""
    loaded = read_config(path)
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} holds {type(loaded).__name__}, not a config mapping: damaged")
    return loaded


def resolved_configs(folder: Path) -> dict[str, dict]:
    """Every launch's resolved config of the seed's runs (not their set-aside attempts), keyed by relative path."""
    return {f"{run}/{path.name}": read_yaml(path) for run in RUNS for path in launch_configs(folder / run)}


def load_seed(folder: Path) -> SeedRun:
    plan = json.loads((folder / "plan.json").read_text())
    equal_time = read_json(folder / "equal_time.json")
    config = read_yaml(run_config_path(folder))
    warmup = load_arm(folder / "warmup", "warmup", -1, plan["warmup"], plan, 0.0)
    warm_s = sum(b - a for a, b in job_spans(folder / "warmup", {})) if warmup else 0.0
    run = SeedRun(folder, plan["seed"], plan, read_json(folder / "warmup_check.json"), equal_time, config, warmup)
    for arm in ARMS:
        end = end_step(arm, plan, equal_time)
        if end is not None and (folder / arm).is_dir():
            loaded = load_arm(folder / arm, arm, plan["warmup"], end, plan, warm_s)
            if loaded is not None:
                run.arms[arm] = loaded
    for name in RUNS:
        start = -1 if name == "warmup" else plan["warmup"]
        end = end_step(name, plan, equal_time) or plan["steps"]
        for aside in sorted(folder.glob(f"{name}.attempt-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
            loaded = load_arm(aside, name, start, end, plan, 0.0)
            if loaded is not None:
                run.attempts.setdefault(name, []).append((int(aside.name.rsplit("-", 1)[1]), loaded))
    run.resolved = resolved_configs(folder)
    return run


def seed_folder(path: Path, scratch: Path) -> Path:
    """The seed folder ``path`` is, or the one its archive holds, unpacked into ``scratch``."""
    if path.is_dir():
        return path
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder")
    try:
        with tarfile.open(path) as tar:
            tops = sorted({name.split("/")[0] for name in tar.getnames()})
            if len(tops) != 1:
                raise ValueError(
                    f"{path} holds {len(tops)} top-level folders {tops[:4]}: the archive of a seed "
                    "(bench/branch.py export) holds its one folder"
                )
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        said = str(err).splitlines()[0].rstrip(":") if str(err) else ""
        raise ValueError(f"{path} is not a readable .tgz ({type(err).__name__}: {said}): damaged, or not one") from None
    return scratch / tops[0]


def check_seed_folder(path: Path, folder: Path) -> None:
    """Refuse ``path`` where its folder is no branch.py seed with a run (another campaign's folder, say)."""
    plan = read_json(folder / "plan.json")
    lacking = [k for k in (*SHARED_PLAN, "seed") if k not in (plan or {})]
    if lacking:
        said = "has no plan.json" if plan is None else f"has a plan.json without {lacking}"
        raise ValueError(f"{path} {said}: not a seed of bench/branch.py")
    if run_config_path(folder) is None:
        raise ValueError(
            f"{path} holds no run (exported before its first job started, as when a machine goes at once): leave it out"
        )


def evaluation_windows(seed: SeedRun) -> tuple[object, list] | None:
    """The (split, window ids) the seed's final evaluations scored (each file checked by seed_files first), refused
    unless every arm scored the same ones (the paired differences compare arms window by window); None before any
    final evaluation."""
    windows = None
    for name, arm in seed.arms.items():
        ev = arm.window_losses
        if ev is None:
            continue
        where = seed.folder / name / "final" / "window_losses.json"
        mine = (ev["split"], ev["window_ids"])
        if windows is None:
            windows, first = mine, name
        elif mine != windows:
            raise ValueError(f"seed {seed.seed}: {name} was evaluated on other windows than {first} ({where})")
    return windows


# Trainer settings that change what a step computes (trainer.deterministic may differ: a work-around, timed apart).
SHARED_TRAINER = ("precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


def compared_settings(config: dict, run: str) -> dict:
    """What every run of every seed in one report must share besides the plan: the model (its divergence guard and
    the LHc arm's causal selection aside), the data (not its seed, nor how many workers read it) and the trainer's
    step settings."""
    data = {k: v for k, v in (config.get("data") or {}).items() if k not in ("seed", "num_workers")}
    trainer = {k: (config.get("trainer") or {}).get(k) for k in SHARED_TRAINER}
    model = config.get("model")
    if isinstance(model, dict):  # the divergence guard stops a run, it changes no step (seed 1: 1000, a work-around)
        model = {k: v for k, v in model.items() if k != "divergence_factor"}
    if run == "LHc" and isinstance(model, dict):  # the arm is the causal selection: that option is its own
        arch = model.get("arch") or {}
        lighthouse = {k: v for k, v in (arch.get("lighthouse") or {}).items() if k != "causal"}
        model = {**model, "arch": {**arch, "lighthouse": lighthouse}}
    return {"model": model, "data": data, "trainer": trainer}


def seed_settings(seed: SeedRun) -> list[tuple[str, dict]]:
    """(where, settings) of each launch as resolved (the command-line extras, which differ per call, included), or of
    the seed's first run as branch.py wrote it where no launch saved one."""
    resolved = seed.resolved or {f"configs/{run_config_path(seed.folder).name}": seed.config}
    return [(where, compared_settings(config, where.split("/")[0])) for where, config in resolved.items()]


def differences(a: object, b: object, prefix: str = "") -> list[str]:
    """The dotted keys where two nested settings differ. A key only one of them has is not compared: a run
    launched before an option existed saved no value for it, and an option is added with the old behaviour as
    its default (model.divergence_factor, model.arch.lighthouse.causal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) & set(b)) for d in differences(a[k], b[k], f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def load_seeds(paths: list[Path], scratch: Path) -> list[SeedRun]:
    """Seed folders, or archives of them (unpacked into ``scratch``), in seed order. Refused, naming the input: one
    that is not a seed with a run, a seed given twice, seeds of other plans, models or data, and damaged final
    evaluations (any of them would change the aggregate without a word)."""
    seeds, windows = [], []
    for path in paths:
        folder = seed_folder(path, scratch)
        check_seed_folder(path, folder)
        seed = load_seed(folder)
        check_seed_files(seed)
        windows.append((path, evaluation_windows(seed)))
        seeds.append(seed)
    seeds.sort(key=lambda s: s.seed)
    names = [s.seed for s in seeds]
    if len(set(names)) != len(names):
        raise ValueError(f"a seed is given twice: seeds {names} from {[str(p) for p in paths]}")
    for s in seeds[1:]:
        differ = {
            k: (seeds[0].plan.get(k), s.plan.get(k)) for k in SHARED_PLAN if seeds[0].plan.get(k) != s.plan.get(k)
        }
        if differ:
            raise ValueError(
                f"seeds {seeds[0].seed} and {s.seed} have different plans {differ}: one report aggregates one design "
                "and plan (give their archives to separate reports)"
            )
    first, reference = seed_settings(seeds[0])[0]
    for s in seeds:
        for where, settings in seed_settings(s):
            if changed := differences(reference, settings):
                raise ValueError(
                    f"seed {s.seed}'s {where} and seed {seeds[0].seed}'s {first} trained different models, data or "
                    f"steps ({', '.join(changed)}): one report aggregates one setup"
                )
    scored = [(p, w) for p, w in windows if w is not None]
    if any(w != scored[0][1] for _, w in scored):
        raise ValueError(f"the seeds of {[str(p) for p, _ in scored]} were evaluated on different validation windows")
    return seeds
