"""Lighthouse + dense recovery against dense training: same model, data, seed and step budget, through the real CLI.

    python bench/compare.py run --config bench/configs/compare_32k.yaml --seeds 0 --steps 320 --max-minutes 9
    python bench/compare.py export --out logs/compare_32k --to $OUT/compare_32k     # everything but checkpoints
    python bench/compare.py report --out logs/compare_32k --report-dir bench/report  # markdown + PNGs

Per seed, two arms, both ``python src/train.py fit`` with the seed for the init and the data order (paired):
``dense`` runs sdpa for S steps; ``lighthouse`` runs Lighthouse for ``share`` * S steps and then dense (one
job, StageSwitch), with the same LR schedule over S. After training, each arm's last checkpoint is validated
once more (``final_eval/``): the arm's own stage-1 attention and dense, and a larger passkey grid.

``run`` is resumable: it stops every job cleanly before ``--max-minutes`` (lighthouse.train.time_budget), and the same
command later continues each arm from its newest checkpoint. Exit code 0: every arm and final evaluation of the
plan is done; 3: time ran out, run the same command again. Nothing is installed here: the environment (e.g.
PYTHONPATH with jsonargparse, and src for ``--steps pass``) comes from the caller.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml
from campaign import (
    REPO,
    Runner,
    add_budget_options,
    claim_folder,
    launch,
    prune_checkpoints,
    run_logged,
    split_extra,
    time_budget,
)

ARMS = ("dense", "lighthouse")
MORE_TO_DO = 3
MAX_VALIDATIONS = 10


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


# ---- the plan ---------------------------------------------------------------------------------------------
def cadence(steps: int, switch: int) -> int:
    """Validation interval: divides both S and the switch step (a validation at the switch measures the
    look-ahead, one at S the result), with at most MAX_VALIDATIONS validations per run."""
    common = math.gcd(steps, switch)
    fitting = [d for d in range(1, common + 1) if common % d == 0 and steps // d <= MAX_VALIDATIONS]
    if not fitting:
        raise ValueError(
            f"--steps {steps} with the switch at step {switch} (share {switch / steps:.4f}) has no "
            f"validation interval dividing both with at most {MAX_VALIDATIONS} validations; pick "
            f"--steps as a multiple of 8 (e.g. 320) or pass --val-every"
        )
    return fitting[0]


def make_plan(args: argparse.Namespace) -> dict:
    steps = one_pass_steps(args.config, args.extra) if args.steps == "pass" else int(args.steps)
    switch = round(args.share * steps)
    if not 0 < switch < steps:
        raise ValueError(
            f"--share {args.share} of --steps {steps} puts the switch at step {switch}: it must lie "
            f"strictly inside the run"
        )
    val_every = args.val_every or cadence(steps, switch)
    if steps % val_every or switch % val_every:
        raise ValueError(f"--val-every {val_every} must divide --steps {steps} and the switch step {switch}")
    n_val = steps // val_every
    ckpt_every = val_every * (n_val // 2 if n_val % 2 == 0 else n_val)  # mid-run and at the end (divides S)
    return {
        "config": str(args.config),
        "steps": steps,
        "share": args.share,
        "switch_step": switch,
        "val_every": val_every,
        "ckpt_every": ckpt_every,
        "eval_samples": args.eval_samples,
        "extra": list(args.extra),
        "arms": list(args.arms),
    }


def one_pass_steps(config_path: str, extra: list[str]) -> int:
    """Steps for one pass over the training split (rounded down to a multiple of 8), from the prepared data."""
    from lighthouse.data.datamodule import LMDataModule  # PYTHONPATH=src, as for every benchmark
    from lighthouse.data.packing import num_windows

    if extra:
        raise ValueError("--steps pass reads the data settings from --config only; put overrides in the config")
    data = yaml.safe_load(Path(config_path).read_text())["data"]
    datamodule = LMDataModule(**data)
    datamodule.setup("fit")
    windows = num_windows(datamodule.train_dataset().split.n_tokens, data["seq_len"]) // data.get("batch_size", 8)
    return windows // 8 * 8


def set_switch_step(config: dict, step: int | None) -> None:
    """StageSwitch.switch_step, wherever the config keeps the stage switch (its own group or a callback)."""
    if "stage" in config:
        config["stage"]["switch_step"] = step
        return
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("StageSwitch"):
            cb.setdefault("init_args", {})["switch_step"] = step
            return
    raise ValueError("the config has no StageSwitch (trainer.callbacks or a 'stage' group)")


def arm_config(base: dict, plan: dict, arm: str, seed: int, out: Path, deadline: float, reserve_s: float) -> dict:
    """The run config of one arm: the base config with the arm's attention, switch, seed, steps and run dir."""
    config = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    trainer, model = config["trainer"], config["model"]
    config["seed_everything"] = seed
    config["data"]["seed"] = seed
    trainer.update(max_steps=plan["steps"], val_check_interval=plan["val_every"], check_val_every_n_epoch=None)
    trainer["logger"]["init_args"].update(save_dir=str(out), name=run_name(arm, seed), version="")
    model["schedule_steps"] = plan["steps"]
    if arm == "dense":
        model["arch"]["attention"] = "sdpa"
    set_switch_step(config, None if arm == "dense" else plan["switch_step"])
    for cb in trainer["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = plan["ckpt_every"]
    trainer["callbacks"].append(time_budget(deadline, reserve_s))
    return config


# ---- state of a run directory -------------------------------------------------------------------------------
def final_eval_done(run_dir: Path) -> bool:
    return (run_dir / "final_eval" / "DONE").exists()


def subprocess_runner(args: list[str], log: Path) -> int:
    """The Runner of a real comparison: ``args`` are train.py's arguments."""
    return run_logged([sys.executable, str(REPO / "src" / "train.py"), *args], log)


# ---- run ------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, runner: Runner = subprocess_runner) -> int:
    deadline = time.time() + 60 * args.max_minutes
    plan = make_plan(args)
    out = Path(args.out)
    claim_folder(out / "compare.json", plan, "a comparison", ignore=("arms",))
    base = yaml.safe_load(Path(args.config).read_text())
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for arm in args.arms:
            status = run_arm(base, plan, arm, seed, out, deadline, args, runner)
            if status != 0:
                return status
    print(f"compare: all arms of seeds {args.seeds} done in {out}")
    return 0


def run_arm(base: dict, plan: dict, arm: str, seed: int, out: Path, deadline: float, args, runner: Runner) -> int:
    """Train one arm to S steps (resuming its newest checkpoint) and evaluate it; 0 when done, else the status."""
    run_dir = out / run_name(arm, seed)
    config_path = out / "configs" / f"{run_name(arm, seed)}.yaml"
    while not final_eval_done(run_dir):
        left = deadline - time.time()
        newest = prune_checkpoints(run_dir)
        trained = newest is not None and newest[0] >= plan["steps"]
        if left < 60 * (args.min_eval_minutes if trained else args.min_launch_minutes):
            print(
                f"compare: {left:.0f} s left, not enough to {'evaluate' if trained else 'train'} "
                f"{run_dir.name}; run the same command again"
            )
            return MORE_TO_DO
        config = arm_config(base, plan, arm, seed, out, deadline - args.exit_margin_s, args.reserve_s)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        if trained:
            cmd = [
                "validate",
                "--config",
                str(config_path),
                "--ckpt_path",
                str(newest[1]),
                "--trainer.logger.init_args.save_dir",
                str(run_dir),
                "--trainer.logger.init_args.name",
                "final_eval",
                "--model.compile",
                "false",
                "--model.passkey.samples",
                str(plan["eval_samples"]),
                *plan["extra"],
            ]
        else:
            cmd = ["fit", "--config", str(config_path), *plan["extra"]]
            if newest is not None:
                cmd += ["--ckpt_path", str(newest[1])]
        rc = launch(runner, run_dir, cmd, cmd[0], None if newest is None else newest[0], who="compare")
        if rc != 0:
            return rc
        if trained:
            (run_dir / "final_eval" / "DONE").write_text(f"{newest[1].name}\n")
        elif (prune_checkpoints(run_dir) or (0,))[0] < plan["steps"]:
            print(f"compare: {run_dir.name} stopped for time; run the same command again to continue")
            return MORE_TO_DO
    print(f"compare: {run_dir.name} done")
    return 0


# ---- export and report -------------------------------------------------------------------------------------------
def export(out: Path, to: Path) -> None:
    """Copy the comparison without checkpoints (event files, records, configs, logs: a few MB)."""
    shutil.copytree(out, to, ignore=shutil.ignore_patterns("*.ckpt", "*.tmp-*"), dirs_exist_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="train and evaluate the arms (resumable); extra CLI overrides after --")
    go.add_argument("--config", required=True, help="the base run config (the Lighthouse arm's settings)")
    go.add_argument("--out", help="comparison folder (default logs/compare_<config name>)")
    go.add_argument("--seeds", type=int, nargs="+", default=[0])
    go.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    go.add_argument(
        "--steps", default="320", help="optimizer steps S per arm, or 'pass' for one pass over the training split"
    )
    go.add_argument("--share", type=float, default=0.625, help="Lighthouse share of S (paper: 10k of 16k)")
    go.add_argument("--val-every", type=int, help="validation interval (default: divides S and the switch step)")
    go.add_argument("--eval-samples", type=int, default=8, help="passkey prompts per cell in the final evaluation")
    add_budget_options(go, reserve_s=60.0, min_launch=4.0, min_eval=1.5)
    ex = sub.add_parser("export", help="copy a comparison without its checkpoints")
    ex.add_argument("--out", required=True)
    ex.add_argument("--to", required=True)
    rep = sub.add_parser("report", help="build markdown and PNGs from comparison folders")
    rep.add_argument("--out", nargs="+", required=True, help="comparison folders (one section each)")
    rep.add_argument("--report-dir", default=str(REPO / "bench" / "report"))
    args = parser.parse_args(argv)
    args.extra = extra
    if args.command == "run" and args.out is None:
        args.out = str(REPO / "logs" / f"compare_{Path(args.config).stem.removeprefix('compare_')}")
    return args


def main(argv: list[str] | None = None, runner: Runner = subprocess_runner) -> int:
    args = parse_args(argv)
    if args.command == "run":
        return run(args, runner)
    if args.command == "export":
        export(Path(args.out), Path(args.to))
        return 0
    from report import build_report  # bench/ is this script's folder, first on sys.path

    try:
        print(build_report([Path(p) for p in args.out], Path(args.report_dir)))
    except (ValueError, OSError) as error:  # a folder that is no comparison, or one cut short: said, no traceback
        print(f"compare report: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
