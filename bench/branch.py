"""The comparison of issue 31, one seed per folder: three arms from ONE shared dense warm-up (the branch design), or
the same arms from step 0 (the from-scratch design, ``--warmup 0``).

    python bench/branch.py run --config bench/configs/branch_32k.yaml --seed 0 --max-minutes 9   # exit 3: again
    python bench/branch.py export --out logs/branch_32k-seed0 --to $OUT      # $OUT/branch_32k-seed0.tgz
    python bench/branch.py report --runs bench/report/runs/branch_32k-seed*.tgz --report-dir bench/report/branch
    python bench/branch.py estimate --steps 1000                             # device minutes of one seed

Per seed (``seed_everything`` and ``data.seed``: init and data order), all through ``python src/train.py fit``:

- warm-up: dense from step 0 to W (``--warmup``, default 200), its checkpoint at W shared by the arms, trained
  with ``trainer.deterministic: true`` so that another machine can train it again bit for bit (its sha256, over
  weights and optimizer state, in ``warmup_fingerprint.json``); recorded (``warmup_check.json``): whether the early
  loss drop has happened by W, i.e. the validation loss at positions 1k-4k lies below that at 0-256 (the model
  reads context; before the drop both are alike);
- D: dense from W to S (``--steps``, default 1000);
- LH: Lighthouse from W to the switch, round(share * S) (``--share``, default 0.625), then dense to S;
- LHc (only when ``--arms`` names it): LH with the strictly causal selection (``model.arch.lighthouse.causal: true``,
  op README §8b), everything else LH's, so LHc - LH is what the paper's selection's look-ahead does to the result;
- E: dense from W with ``rescale_lr: true`` (the rest of the LR schedule fitted into its steps, so it ends
  annealed) for as many steps as take the time LH took from W. The rule (``equal_time.json``): LH's time is its
  steps in each phase times that phase's steady-state step time (ThroughputRecorder windows: no start-up,
  compilation, validation or checkpoints, which are the same fixed costs in every arm or artefacts of time-limited
  calls); E's steps = round(LH's time / D's steady-state dense step time). So E needs D and LH trained first.

From scratch (``--warmup 0``, the paper's own protocol): no shared run and no warm-up check; every arm starts at
step 0 from the seed's init and data order, so D and LH are paired by seed (LH: Lighthouse from step 0 to the
switch, then dense; E: dense, its whole LR schedule fitted into its steps). The default folder is
``logs/<config name>-scratch-seed<N>``, so its archives never mix with the branch design's in one report.

Every arm has the same validation cadence (it divides W, the switch and S), LR schedule length S and data.
Each finished arm gets its final evaluation (``<arm>/final/``): per-window dense losses on ``--eval-windows``
(default 256) validation windows (lighthouse.eval.window_losses) and recall (lighthouse.eval.recall); LH also gets
the look-ahead probe (lighthouse.eval.lookahead) on its checkpoint at the switch.

``run`` is resumable inside one machine's lifetime: every training job carries a TimeBudget and stops with a
checkpoint before ``--max-minutes``; the same command continues each job from its newest checkpoint. Exit code 0:
the seed is done; 3: time ran out, run the same command again. Only the newest checkpoint of each run (and LH's
at the switch, until probed) is kept. ``export`` writes the folder without checkpoints as ``<folder name>.tgz``,
so seeds of several sessions unpack side by side. Why a module of its own and not bench/compare.py: the plan
(a shared run, arms resumed from its checkpoint, an arm sized from two others' measurements) shares nothing with
compare.py's from-scratch pairs but the job machinery, which both import from bench/campaign.py; compare.py and
the archived comparisons it made stay as they are.

Arms train in the order ``--arms`` names them (E last), so a session short of device time can put first the arm
it needs most. A seed whose machine is gone continues on a new one from its export (``--resume-from ARCHIVE``,
unpacked when the folder is absent): an arm whose final evaluation the archive holds is done (a Lighthouse arm with
its window losses but no look-ahead probe too: the probe needs the switch checkpoint, which went with the machine,
and stays unmeasured); any other run left no checkpoint there, so its files are set aside (``<run>.attempt-<n>/``)
and it trains again from its start. ``--export-to DIR`` writes the export each time an arm is done, so that a call
killed before its own export still leaves the finished arms. From scratch that keeps the pairing (every arm
starts from the seed's init). In the branch design the warm-up's checkpoint went with its machine: the new machine
trains the warm-up again and goes on only if it matches ``warmup_fingerprint.json`` bit for bit (anything else
would not be the point the finished arms branched from); a folder from before the deterministic warm-up has no
fingerprint and is refused while an arm is pending and another has started, and so is one whose warm-up ran with
``-- --trainer.deterministic false`` (half the warm-up's time; then a seed's calls need one warm machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

import yaml

from lighthouse.eval.run_logs import read_json_lines

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign import (  # noqa: E402  (bench/ is this script's folder)
    REPO,
    Runner,
    add_budget_options,
    checkpoints,
    claim_folder,
    device_info,
    launch,
    prune_checkpoints,
    read_json,
    run_logged,
    split_extra,
    time_budget,
    write_json,
)

ARMS = ("D", "LH", "LHc", "E")
DEFAULT_ARMS = ("D", "LH", "E")  # the design; LHc is an added experiment
SCRATCH_ARMS = ("D", "LH")  # the from-scratch design's pair (the paper's protocol)
SPARSE_ARMS = ("LH", "LHc")  # Lighthouse to the switch, then dense
RUNS = ("warmup", *ARMS)
BAD_FOLDER = 2
MORE_TO_DO = 3
NO_DROP = 4
MIN_VALIDATIONS = 8  # points on each arm's validation curve at least, over S steps
EARLY, LATE = "0-256", "1k-4k"  # position ranges of the early-drop check


# ---- the plan ---------------------------------------------------------------------------------------------------
def cadence(warmup: int, switch: int, steps: int, min_validations: int = MIN_VALIDATIONS) -> int:
    """Validation interval: divides W, the switch and S (a validation at W checks the warm-up, one at the switch
    measures the Lighthouse phase's end, one at S the result); the fewest validations (each costs time in every
    arm) that still give ``min_validations`` points over S."""
    common = math.gcd(warmup, switch, steps)
    return max(d for d in range(1, common + 1) if common % d == 0 and (steps // d >= min_validations or d == 1))


def make_plan(steps: int, warmup: int, share: float, val_every: int | None = None) -> dict:
    # nan and inf have no step (round() would raise without naming --share); the check below refuses them
    switch = round(share * steps) if math.isfinite(share) else share
    if not 0 <= warmup < switch < steps:
        fits = f"--share from {(warmup + 1) / steps:g} to {(steps - 1) / steps:g}" if 0 <= warmup < steps - 1 else ""
        raise ValueError(
            f"--warmup {warmup}, --steps {steps} and --share {share} (switch at step {switch}) must satisfy "
            f"0 <= warmup < switch < steps, switch = round(share * steps) ({fits or 'no --share fits'}; "
            "warmup 0: the from-scratch design)"
        )
    val_every = val_every or cadence(warmup, switch, steps)
    if warmup % val_every or switch % val_every or steps % val_every:
        raise ValueError(
            f"--val-every {val_every} must divide --warmup {warmup}, the switch {switch} and --steps {steps}"
        )
    return {"steps": steps, "warmup": warmup, "share": share, "switch_step": switch, "val_every": val_every}


def from_scratch(plan: dict) -> bool:
    """The from-scratch design: no shared warm-up, every arm from step 0."""
    return plan["warmup"] == 0


def design_arms(plan: dict) -> tuple[str, ...]:
    """The arms a seed of the plan's design needs to count as complete: the branch design's D, LH and E; from
    scratch the paper's pair, D and LH (E and LHc are added experiments there)."""
    return SCRATCH_ARMS if from_scratch(plan) else DEFAULT_ARMS


def folder_name(config: str | Path, seed: int, warmup: int) -> str:
    """The seed folder's (and its archive's) name: the two designs never share one."""
    return f"{Path(config).stem}{'-scratch' if warmup == 0 else ''}-seed{seed}"


def phase_step_times(records: list[dict], start: int, end: int) -> dict[str, float]:
    """Mean steady-state step time per attention backend over the ThroughputRecorder records of steps in
    (start, end]: {"sdpa": s, "lighthouse": s, ...}."""
    by: dict[str, list[float]] = {}
    for r in records:
        if start < r["step"] <= end:
            by.setdefault(r.get("attention", "sdpa"), []).append(r["step_time_s"])
    return {k: statistics.fmean(v) for k, v in by.items()}


def equal_time_steps(lh_phases: dict[str, tuple[int, float]], dense_step_s: float) -> tuple[int, float]:
    """(E's steps after W, LH's time): LH's time is the sum over its phases of steps x steady-state step time;
    E trains for that time at D's dense step time (at least one step)."""
    if dense_step_s <= 0:
        raise ValueError(f"D's dense step time {dense_step_s} s must be > 0")
    lh_s = sum(n * t for n, t in lh_phases.values())
    return max(1, round(lh_s / dense_step_s)), lh_s


def measure_equal_time(plan: dict, lh_records: list[dict], d_records: list[dict]) -> dict:
    """The E arm's length from the measured step times of LH (per phase) and D; raises if one is unmeasured."""
    w, sw, s = plan["warmup"], plan["switch_step"], plan["steps"]
    sparse = {k: v for k, v in phase_step_times(lh_records, w, sw).items() if k != "sdpa"}
    recovery = phase_step_times(lh_records, sw, s).get("sdpa")
    dense = phase_step_times(d_records, w, s).get("sdpa")
    if len(sparse) != 1 or recovery is None or dense is None:
        raise ValueError(
            f"cannot size E: steady-state step times missing (LH sparse phase {sparse}, LH recovery {recovery}, "
            f"D {dense}); the ThroughputRecorder needs more steps than throughput.skip_steps + window per phase"
        )
    ((backend, sparse_s),) = sparse.items()
    n_e, lh_s = equal_time_steps({backend: (sw - w, sparse_s), "sdpa": (s - sw, recovery)}, dense)
    return {
        "rule": "E steps = round((LH sparse steps x LH sparse step time + LH dense steps x LH dense step time) / "
        "D dense step time); steady-state step times (ThroughputRecorder)",
        "lh_sparse_step_s": sparse_s,
        "lh_dense_step_s": recovery,
        "d_dense_step_s": dense,
        "lh_time_s": lh_s,
        "e_steps": n_e,
        "e_end": w + n_e,
    }


# ---- device time ----------------------------------------------------------------------------------------------
def estimate(
    steps: int,
    warmup: int = 200,
    share: float = 0.625,
    arms: tuple[str, ...] = DEFAULT_ARMS,
    tokens_per_step: int = 4 * 32768,
    dense_tps: float = 235e3,
    lh_tps: float = 543e3,
    validation_s: float = 5.0,
    launch_s: float = 35.0,
    eval_s: float = 30.0,
    deterministic_cost: float = 2.0,
) -> dict:
    """Minutes of one seed: training at the measured steady-state tokens/s, plus validations, job start-ups
    (imports, data, compilation) and final evaluations at assumed costs. Defaults: H200, branch_32k.yaml, the
    issue's tokens/s; a validation (64 windows + 32 recall windows, forward only) ~5 s; a training job's start-up
    and compilation ~35 s (the compare report measured 32-37 s at 32768), each run launched twice but LH once
    (the 10-minute calls cut the others); an evaluation job ~30 s (window losses, recall, and the look-ahead of
    a Lighthouse arm). A Lighthouse arm's validations before the switch count twice (own and dense attention).
    The warm-up's steps cost ``deterministic_cost`` dense steps (H200, 2026-12-03: 1.109 s against 0.558 s)."""
    plan = make_plan(steps, warmup, share)
    w, sw = warmup, plan["switch_step"]
    dense, sparse = tokens_per_step / dense_tps, tokens_per_step / lh_tps
    lh = (sw - w) * sparse + (steps - sw) * dense
    e_steps = round(lh / dense)
    train = {"warmup": w * dense * deterministic_cost, "D": (steps - w) * dense, "LH": lh, "LHc": lh, "E": lh}
    n_val = {"warmup": w, "D": steps - w, "LH": steps - w + sw - w, "LHc": steps - w + sw - w, "E": e_steps}
    runs = [r for r in ("warmup", *arms) if r != "warmup" or w]
    val = sum(n_val[r] // plan["val_every"] * validation_s for r in runs)
    launches = sum(1 if r in SPARSE_ARMS else 2 for r in runs)
    evals = sum(3 if a in SPARSE_ARMS else 2 for a in arms)
    overhead = launches * launch_s + evals * eval_s
    total = sum(train[r] for r in runs) + val + overhead
    return {
        **plan,
        "e_steps": e_steps,
        "train_min": {r: train[r] / 60 for r in runs},
        "validation_min": val / 60,
        "overhead_min": overhead / 60,
        "total_min": total / 60,
    }


# ---- configs ----------------------------------------------------------------------------------------------------
def schedule(arm: str, plan: dict, sparse: str) -> list[dict]:
    w = plan["warmup"]
    if arm in SPARSE_ARMS:
        own = [{"start": w, "attention": sparse}, {"start": plan["switch_step"], "attention": "sdpa"}]
    elif arm == "E":
        own = [{"start": w, "attention": "sdpa", "rescale_lr": True}]
    else:
        return [{"start": 0, "attention": "sdpa"}]
    # Before W an arm is the shared dense warm-up it resumes; from scratch its own phases start at step 0.
    return ([{"start": 0, "attention": "sdpa"}] if w else []) + own


def end_step(run: str, plan: dict, equal_time: dict | None) -> int:
    return {"warmup": plan["warmup"], "E": (equal_time or {}).get("e_end")}.get(run, plan["steps"])


def run_config(base: dict, plan: dict, run: str, seed: int, out: Path, equal_time: dict | None = None) -> dict:
    """One run's config: the base with the run's seed, schedule, end step, cadence, checkpoints and run dir."""
    config = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    trainer, model = config["trainer"], config["model"]
    end = end_step(run, plan, equal_time)
    if end is None:
        raise ValueError("the E arm's length is unknown until D and LH are trained (equal_time.json)")
    config["seed_everything"] = seed
    config["data"]["seed"] = seed
    trainer.update(max_steps=end, val_check_interval=plan["val_every"], check_val_every_n_epoch=None)
    if run == "warmup":
        # Bitwise repeatable, so a machine lost between two calls costs a re-run of the warm-up, not the seed
        # (H200, 2026-12-03: three 60-step runs of this model on two machines gave the same weights; 2.0x the dense
        # step, on W steps only). The arms keep the fast, non-deterministic SDPA backward.
        trainer["deterministic"] = True
    trainer["logger"]["init_args"].update(save_dir=str(out), name=run, version="")
    model["schedule_steps"] = plan["steps"]
    sparse = model["arch"]["attention"]
    if sparse == "sdpa":
        raise ValueError("the base config's model.arch.attention must be the Lighthouse backend LH runs (not sdpa)")
    if run == "LHc":
        model["arch"].setdefault("lighthouse", {})["causal"] = True
    stage = config.setdefault("stage", {})
    stage.update(
        switch_step=None, schedule=schedule(run, plan, sparse), min_start_step=0 if run == "warmup" else plan["warmup"]
    )
    # Checkpoints at W (the branch point), LH's switch (the look-ahead probe) and each run's end; older ones are
    # deleted here, not by Lightning (it would also drop the switch checkpoint).
    every = math.gcd(plan["switch_step"], plan["steps"]) if run in SPARSE_ARMS else end
    for cb in trainer["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"].update(every_n_train_steps=every, save_top_k=-1, save_last=False)
    return config


# ---- state of a seed folder -----------------------------------------------------------------------------------
def checkpoint_at(run_dir: Path, step: int) -> Path | None:
    return next((p for s, p in checkpoints(run_dir) if s == step), None)


def set_aside(run_dir: Path) -> Path:
    """Move a run's files that belong to no checkpoint (a failed attempt, or a run restored from an archive) to
    ``<run>.attempt-<n>``, kept for the record, so its restart writes a clean folder (one event file per launch)."""
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.attempt-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    return aside


def unpack_seed(archive: Path, out: Path) -> None:
    """Unpack ``archive`` (an ``export``) as the seed folder ``out``; its one top folder must be named like ``out``."""
    if not archive.is_file():
        raise ValueError(f"--resume-from {archive}: no such archive")
    with tarfile.open(archive) as tar:
        tops = sorted({Path(member.name).parts[0] for member in tar.getmembers()})
        if tops != [out.name]:
            raise ValueError(f"--resume-from {archive}: holds {tops}, not the seed folder {out.name}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tar.extractall(out.parent, filter="data")  # plain files only: no links out, no devices, no absolute paths


def subprocess_runner(args: list[str], log: Path) -> int:
    """The Runner of a real seed: ``args`` are python's arguments after the interpreter, with src/ on PYTHONPATH."""
    path = os.environ.get("PYTHONPATH")
    return run_logged([sys.executable, *args], log, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), path])))


def warmup_check(run_dir: Path, step: int) -> dict:
    """Whether the early loss drop has happened by the warm-up's last validation: dense validation loss at
    positions 1k-4k (the last range a shorter window has) below that at 0-256."""
    from lighthouse.eval.positions import bucket_start
    from lighthouse.eval.run_logs import read_run

    run = read_run(run_dir)
    prefix = "val/loss_dense_pos/"
    ranges = sorted((t[len(prefix) :] for t in run.scalars if t.startswith(prefix)), key=bucket_start)
    if EARLY not in ranges or len(ranges) < 2:
        return {"step": step, "drop": None, "why": f"no position ranges {EARLY} and later logged ({ranges})"}
    late = LATE if LATE in ranges else ranges[-1]
    early_loss, late_loss = (run.series(prefix + r).last() for r in (EARLY, late))
    return {
        "step": step,
        "early_range": EARLY,
        "late_range": late,
        "early_loss": early_loss,
        "late_loss": late_loss,
        "drop": late_loss < early_loss,
        "val_loss_dense": run.series("val/loss_dense").last(),
    }


def fingerprint(checkpoint: Path) -> str:
    """sha256 of a checkpoint's weights and optimizer state, bit for bit: what an arm starts from. Its other entries
    (callbacks' wall times, loop counters, paths) may differ between two runs of the same training."""
    import hashlib

    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    digest = hashlib.sha256()

    def add(name: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                add(f"{name}/{key}", value[key])
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                add(f"{name}/{i}", item)
        elif isinstance(value, torch.Tensor):
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{name}={value!r}".encode())

    add("state_dict", state["state_dict"])
    add("optimizer_states", state["optimizer_states"])
    return digest.hexdigest()


def ran_deterministic(run_dir: Path) -> bool:
    """Whether the run's own saved config (LightningCLI's, overrides included) set ``trainer.deterministic``."""
    saved = run_dir / "config.yaml"
    config = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    return (config.get("trainer") or {}).get("deterministic") is True


# ---- run ---------------------------------------------------------------------------------------------------------
class Seed:
    """One seed's folder and the jobs that fill it."""

    def __init__(self, args: argparse.Namespace, runner: Runner):
        self.args, self.runner = args, runner
        self.deadline = time.time() + 60 * args.max_minutes
        self.plan = {
            **make_plan(args.steps, args.warmup, args.share, args.val_every),
            "seed": args.seed,
            "config": str(args.config),
            "eval_windows": args.eval_windows,
            "extra": list(args.extra),
        }
        self.out = Path(args.out)
        self.base = yaml.safe_load(Path(args.config).read_text())

    def left(self) -> float:
        return self.deadline - time.time()

    def launch(self, run: str, args: list[str], kind: str, resumed_from: int | None = None) -> int:
        return launch(self.runner, self.out / run, args, kind, resumed_from, who="branch")

    def train(self, run: str, equal_time: dict | None = None) -> int:
        """Train ``run`` to its end step, resuming its newest checkpoint (or the warm-up's at W); 0 when done."""
        run_dir = self.out / run
        end = end_step(run, self.plan, equal_time)
        keep = (
            (self.plan["switch_step"],)
            if run in SPARSE_ARMS and not (run_dir / "final" / "lookahead.json").exists()
            else ()
        )
        while True:
            newest = prune_checkpoints(run_dir, keep)
            if newest is not None and newest[0] >= end:
                return 0
            if newest is None and run_dir.is_dir() and any(run_dir.iterdir()):
                print(f"branch: {run} has files but no checkpoint; moved to {set_aside(run_dir)}, {run} starts again")
            if self.left() < 60 * self.args.min_launch_minutes:
                print(f"branch: {self.left():.0f} s left, not enough to train {run}; run the same command again")
                return MORE_TO_DO
            start = newest
            if start is None and run != "warmup" and not from_scratch(self.plan):
                start = (self.plan["warmup"], self.warmup_checkpoint())
            config = run_config(self.base, self.plan, run, self.plan["seed"], self.out, equal_time)
            config["trainer"]["callbacks"].append(
                time_budget(self.deadline - self.args.exit_margin_s, self.args.reserve_s)
            )
            path = self.out / "configs" / f"{run}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            cmd = ["src/train.py", "fit", "--config", str(path), *self.plan["extra"]]
            if start is not None:
                cmd += ["--ckpt_path", str(start[1])]
            rc = self.launch(run, cmd, "fit", None if start is None else start[0])
            if rc != 0:
                return rc
            reached = (prune_checkpoints(run_dir, keep) or (0,))[0]
            if reached < end:
                print(f"branch: {run} stopped for time at step {reached}; run the same command again to continue")
                return MORE_TO_DO

    def warmup_checkpoint(self) -> Path | None:
        """The shared warm-up's checkpoint at W, which every arm of the branch design starts from."""
        return checkpoint_at(self.out / "warmup", self.plan["warmup"])

    def final_kinds(self, run: str) -> list[str]:
        """The evaluations of a trained arm: window losses, recall, and (LH, LHc) the look-ahead at the switch."""
        kinds = ["window_losses"] + (["recall"] if self.args.final_recall else [])
        return kinds + (["lookahead"] if run in SPARSE_ARMS else [])

    def evaluated(self, run: str) -> bool:
        """Whether every final evaluation of ``run`` is on record (a lost probe aside): it is done, with or without
        its checkpoints."""
        kinds = [k for k in self.final_kinds(run) if not (k == "lookahead" and self.probe_lost(run))]
        return all((self.out / run / "final" / f"{kind}.json").exists() for kind in kinds)

    def probe_lost(self, run: str) -> bool:
        """An arm restored from an archive with its window losses but not its look-ahead probe: the checkpoint at the
        switch went with the machine. The arm counts as done, its probe as not measured: training it again for the
        probe would cost a whole arm and give another realization of it (SDPA's backward is not bitwise
        reproducible), whose probe would not belong to the archived losses. On a live folder the switch checkpoint
        is kept until probed, so this is never true there."""
        final = self.out / run / "final"
        return (
            run in SPARSE_ARMS
            and (final / "window_losses.json").exists()
            and not (final / "lookahead.json").exists()
            and checkpoint_at(self.out / run, self.plan["switch_step"]) is None
        )

    def evaluate(self, run: str) -> int:
        """The final evaluations (``final_kinds``) of a trained arm, each skipped once its output exists."""
        run_dir = self.out / run
        final = run_dir / "final"
        final.mkdir(parents=True, exist_ok=True)
        last = checkpoints(run_dir)[-1][1]
        recall = self.base["model"].get("recall") or {}
        kinds = self.final_kinds(run)
        jobs = {"window_losses": ["--ckpt", str(last), "--windows", str(self.plan["eval_windows"]), "--out"]}
        if "recall" in kinds:
            jobs["recall"] = ["--ckpt", str(last), "--windows", str(recall.get("windows", 32)), "--pairs"]
            jobs["recall"] += [str(recall.get("pairs", 8)), "--seed", str(recall.get("seed", 0)), "--json"]
        if "lookahead" in kinds:
            at_switch = checkpoint_at(run_dir, self.plan["switch_step"])
            jobs["lookahead"] = ["--ckpt", str(at_switch), "--windows", str(self.args.lookahead_windows), "--json"]
        for kind, args in jobs.items():
            target = final / f"{kind}.json"
            if target.exists():
                continue
            if self.left() < 60 * self.args.min_eval_minutes:
                print(f"branch: {self.left():.0f} s left, not enough for {run}'s {kind}; run the same command again")
                return MORE_TO_DO
            tmp = final / f"{kind}.json.tmp"
            rc = self.launch(run, ["-m", f"lighthouse.eval.{kind}", *args, str(tmp)], kind)
            if rc != 0:
                return rc
            tmp.replace(target)  # the output file is the mark that this evaluation is done
        if run in SPARSE_ARMS:
            prune_checkpoints(run_dir)  # the switch checkpoint has been probed
        return 0

    def shared_warmup(self) -> int:
        """Train the shared dense warm-up and record whether the early loss drop happened by W."""
        status = self.train("warmup") or self.check_fingerprint()
        if status:
            return status
        check_path = self.out / "warmup_check.json"
        if not check_path.exists():
            write_json(check_path, warmup_check(self.out / "warmup", self.plan["warmup"]))
        check = read_json(check_path)
        print(f"branch: warm-up check at step {self.plan['warmup']}: {check}")
        if check["drop"] is False:
            note = f"the early loss drop has not happened by step {self.plan['warmup']}"
            if self.args.require_drop:
                print(f"branch: {note}; start a new folder with a later --warmup (or leave out --require-drop)")
                return NO_DROP
            print(f"branch: warning: {note}; the arms branch anyway (recorded in warmup_check.json)")
        return 0

    def check_fingerprint(self) -> int:
        """Record the warm-up checkpoint's fingerprint, or (trained again on a new machine) check it against the
        record: arms may only branch from the checkpoint the finished ones branched from."""
        path = self.out / "warmup_fingerprint.json"
        found = fingerprint(self.warmup_checkpoint())
        if not path.exists():
            record = {"step": self.plan["warmup"], "sha256": found, "device": device_info()["device"]}
            write_json(path, {**record, "deterministic": ran_deterministic(self.out / "warmup")})
            return 0
        recorded = read_json(path)["sha256"]
        if found != recorded:
            print(
                f"branch: the warm-up trained again differs from the recorded one (sha256 {found[:16]}, recorded "
                f"{recorded[:16]}{self.devices_said()}): its arms would not branch from the same point; start the "
                "seed in a new folder"
            )
            return BAD_FOLDER
        return 0

    def fingerprint_device(self) -> str | None:
        """The GPU the recorded warm-up ran on: in its record since 2026-12-05, before that the seed's first machine."""
        recorded = read_json(self.out / "warmup_fingerprint.json").get("device")
        return recorded or (read_json(self.out / "plan.json") or {}).get("device")

    def devices_said(self) -> str:
        """Where the recorded warm-up and this one ran, when the GPU models differ: bitwise equality across two
        models is not established (the same seeds matched on two H200s; an H100 and an H200 were never compared)."""
        recorded, here = self.fingerprint_device(), device_info()["device"]
        return "" if recorded in (None, here) else f"; recorded on {recorded}, trained again on {here}"

    def rederivable(self) -> bool:
        """Whether a lost warm-up checkpoint can be trained again and checked: a fingerprint of a deterministic run."""
        path = self.out / "warmup_fingerprint.json"
        return path.exists() and read_json(path).get("deterministic") is True

    def export_done(self, arm: str) -> None:
        """With ``--export-to``: the seed's export as soon as ``arm`` is done, so that a call killed later (its
        machine gone, its time limit hit) still leaves every finished arm behind."""
        if self.args.export_to:
            print(f"branch: {arm} done; exported to {export(self.out, Path(self.args.export_to))}")

    def go(self) -> int:
        if self.args.resume_from and not self.out.exists():
            unpack_seed(Path(self.args.resume_from), self.out)
            done = [arm for arm in ARMS if self.evaluated(arm)]
            print(f"branch: {self.out} unpacked from {self.args.resume_from}; done: {' '.join(done) or 'no arm'}")
            if not done:
                # Checkpoints stay on the machine that wrote them, so an archive without a finished arm holds nothing
                # a new machine can continue (2026-12-03: a branch seed's half-trained D and its warm-up, whose
                # checkpoint was gone, made the call refuse the folder). Its record is the archive itself.
                shutil.rmtree(self.out)
                print(f"branch: no finished arm to keep; seed {self.plan['seed']} starts afresh in {self.out}")
            for arm in filter(self.probe_lost, ARMS):
                print(f"branch: {arm}'s look-ahead probe is not measured: its switch checkpoint went with its machine")
        claim_folder(self.out / "plan.json", self.plan, "a branch seed")
        pending = [arm for arm in self.args.arms if not self.evaluated(arm)]
        branching = pending and not from_scratch(self.plan)
        if branching and any((self.out / arm).exists() for arm in ARMS) and not self.warmup_checkpoint():
            if not self.rederivable():
                print(
                    "branch: the warm-up's checkpoint is gone (restored from an archive?) and arms exist; its run was "
                    "not deterministic (no fingerprint), so a new warm-up would not be the one they branched from: "
                    "start the seed in a new folder"
                )
                return BAD_FOLDER
            print(
                "branch: the warm-up's checkpoint is gone; training it again and checking its fingerprint"
                + self.devices_said()
            )
        status = self.shared_warmup() if branching else 0
        if status:
            return status
        for arm in (a for a in pending if a != "E"):
            status = self.train(arm) or self.evaluate(arm)
            if status:
                return status
            self.export_done(arm)
        if "E" not in self.args.arms:
            print(f"branch: seed {self.plan['seed']}: arms {' '.join(self.args.arms)} done in {self.out}")
            return 0
        e_path = self.out / "equal_time.json"
        if not e_path.exists():
            records = {arm: read_json_lines(self.out / arm / "throughput.jsonl") for arm in ("LH", "D")}
            rule = measure_equal_time(self.plan, records["LH"], records["D"])
            for arm in ("LH", "D"):  # for the record: whole jobs, start-up and validation included
                jobs = [r for r in read_json_lines(self.out / arm / "launches.jsonl") if r["kind"] == "fit"]
                rule[f"{arm.lower()}_jobs_s"] = sum(r["end"] - r["start"] for r in jobs)
            write_json(e_path, rule)
        equal_time = read_json(e_path)
        status = 0 if "E" not in pending else self.train("E", equal_time) or self.evaluate("E")
        if status:
            return status
        self.export_done("E")
        (self.out / "DONE").write_text("all arms trained and evaluated\n")
        print(f"branch: seed {self.plan['seed']} done in {self.out}")
        return 0


# ---- export -------------------------------------------------------------------------------------------------------
def export(out: Path, to: Path) -> Path:
    """``to/<folder name>.tgz`` of the seed folder without checkpoints (event files, records, configs, logs), its
    top folder named like the archive, so archives of several seeds unpack side by side. A run's data manifest is
    kept only where it differs from the first run's (the warm-up's, or from scratch D's): every run of a seed reads
    the same data, and at 32768 on the python corpus each copy is 6 MB of file lists, most of an archive."""
    to.mkdir(parents=True, exist_ok=True)
    target = to / f"{out.name}.tgz"
    manifest = "data_manifest.json"
    first = next((out / run / manifest for run in RUNS if (out / run / manifest).is_file()), None)

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = Path(info.name).name
        skip = name.endswith((".ckpt", ".ckpt.sha256", ".tmp")) or ".tmp-" in name
        parts = Path(info.name).parts
        if name == manifest and len(parts) == 3 and first and out / parts[1] / name != first:  # also <run>.attempt-<n>
            skip = (out / parts[1] / name).read_bytes() == first.read_bytes()
        return None if skip else info

    tmp = target.with_suffix(".tgz.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=out.name, filter=keep)
    tmp.replace(target)
    return target


# ---- command line -------------------------------------------------------------------------------------------------
def check_plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The plan and arms of ``run`` and ``estimate``, one check for both, before anything is written or timed."""
    twice = sorted({arm for arm in args.arms if args.arms.count(arm) > 1}, key=ARMS.index)
    if twice:  # estimate would count the arm twice; run would train it once and report it done twice
        parser.error(f"--arms {' '.join(args.arms)}: {' '.join(twice)} named more than once (each arm is one run)")
    if "E" in args.arms and not {"D", "LH"} <= set(args.arms):
        parser.error(f"--arms {' '.join(args.arms)}: E needs D and LH (its length comes from their step times)")
    try:
        make_plan(args.steps, args.warmup, args.share, getattr(args, "val_every", None))
    except ValueError as error:
        parser.error(str(error))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="train and evaluate one seed (resumable); extra CLI overrides after --")
    go.add_argument("--config", required=True, help="the base run config (model.arch.attention: LH's backend)")
    go.add_argument("--seed", type=int, default=0)
    go.add_argument("--out", help="the seed's folder (default logs/<config name>[-scratch]-seed<N>)")
    go.add_argument(
        "--warmup", type=int, default=200, help="W: steps of the shared dense warm-up (0: every arm from scratch)"
    )
    go.add_argument("--steps", type=int, default=1000, help="S: steps of the D and LH arms")
    go.add_argument("--share", type=float, default=0.625, help="LH's switch step as a share of S")
    go.add_argument("--val-every", type=int, help="validation interval (default: divides W, the switch and S)")
    go.add_argument("--eval-windows", type=int, default=256, help="validation windows of the final evaluation")
    go.add_argument("--lookahead-windows", type=int, default=64, help="windows of the look-ahead probe")
    go.add_argument("--require-drop", action="store_true", help="stop (exit 4) if the warm-up shows no loss drop")
    go.add_argument(
        "--resume-from",
        help="an export of this seed (<folder name>.tgz) to continue on a new machine; unpacked when --out is absent",
    )
    go.add_argument(
        "--export-to",
        help="a folder for the seed's export (<folder name>.tgz), written again each time an arm is done",
    )
    go.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        default=list(DEFAULT_ARMS),
        help="the arms to train after the warm-up, in this order (E last; E needs D and LH: its length comes from "
        "their step times); LHc, LH with the strictly causal selection, only when named",
    )
    go.add_argument(
        "--final-recall",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the recall evaluation of each arm's final checkpoint (~30 s each on an H200; the validations log "
        "recall during training anyway)",
    )
    add_budget_options(go, reserve_s=45.0, min_launch=2.0, min_eval=1.0)
    ex = sub.add_parser("export", help="the seed folder without checkpoints, as <to>/<folder name>.tgz")
    ex.add_argument("--out", required=True)
    ex.add_argument("--to", required=True)
    rep = sub.add_parser("report", help="markdown and PNGs from every seed folder or archive given")
    rep.add_argument("--runs", nargs="+", required=True, help="seed folders or their .tgz archives")
    # No default: one default folder would let a report of another design or context overwrite the committed one.
    rep.add_argument("--report-dir", required=True, help="where README.md and the PNGs go (e.g. bench/report/branch)")
    est = sub.add_parser("estimate", help="device minutes of one seed at measured tokens/s (default: the issue's)")
    est.add_argument("--steps", type=int, default=1000)
    est.add_argument("--warmup", type=int, default=200)
    est.add_argument("--share", type=float, default=0.625)
    est.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS))
    est.add_argument("--tokens-per-step", type=int, default=4 * 32768)
    est.add_argument("--dense-tps", type=float, default=235e3, help="dense steady-state tokens/s")
    est.add_argument("--lh-tps", type=float, default=543e3, help="Lighthouse steady-state tokens/s")
    est.add_argument("--validation-s", type=float, default=5.0, help="seconds of one validation")
    est.add_argument(
        "--deterministic-cost",
        type=float,
        default=2.0,
        help="a warm-up step in dense steps (deterministic SDPA; 1 with `run ... -- --trainer.deterministic false`)",
    )
    args = parser.parse_args(argv)
    args.extra = extra
    if args.command == "run" and args.require_drop and args.warmup == 0:
        parser.error("--require-drop checks the shared warm-up; --warmup 0 (from scratch) has none")
    if args.command in ("run", "estimate"):
        check_plan(parser, args)
    if args.command == "estimate":
        for flag in ("tokens_per_step", "dense_tps", "lh_tps", "deterministic_cost"):
            value = getattr(args, flag)
            if not (math.isfinite(value) and value > 0):
                parser.error(f"--{flag.replace('_', '-')} {value}: must be a number > 0")
        if not (math.isfinite(args.validation_s) and args.validation_s >= 0):
            parser.error(f"--validation-s {args.validation_s}: must be a number >= 0")
    if args.command == "run" and args.out is None:
        args.out = str(REPO / "logs" / folder_name(args.config, args.seed, args.warmup))
    return args


def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> int:
    args = parse_args(argv)
    if args.command == "run":
        try:
            return Seed(args, runner).go()
        except ValueError as error:  # a folder or archive that does not fit this command: said, no traceback
            print(f"branch: {error}", file=sys.stderr)
            return BAD_FOLDER
    if args.command == "export":
        if not Path(args.out).is_dir():
            print(f"branch export: --out {args.out} is not a seed folder (nothing ran yet?)", file=sys.stderr)
            return 2
        print(export(Path(args.out), Path(args.to)))
        return 0
    if args.command == "estimate":
        print(
            json.dumps(
                estimate(
                    args.steps,
                    args.warmup,
                    args.share,
                    tuple(args.arms),
                    args.tokens_per_step,
                    args.dense_tps,
                    args.lh_tps,
                    args.validation_s,
                    deterministic_cost=args.deterministic_cost,
                ),
                indent=1,
            )
        )
        return 0
    from branch_report import build_report

    try:
        print(build_report([Path(p) for p in args.runs], Path(args.report_dir)))
    except (ValueError, OSError) as error:  # an input that is no seed, seeds that do not belong together: said
        print(f"branch report: {error}", file=sys.stderr)
        return BAD_FOLDER
    return 0


if __name__ == "__main__":
    sys.exit(main())
