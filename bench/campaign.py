"""What compare.py and branch.py share: resumable, time-limited training jobs run through the real CLI, each
recorded in its run folder (``launches.jsonl``, ``launch-<n>.log``), and the folder's JSON files.

A campaign script plans its runs and decides what to launch next; this module launches a job and records it,
prunes checkpoints, claims a folder for one set of settings, and adds the time-budget options to its command line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from lighthouse.eval.run_logs import read_json_lines
from lighthouse.tool_args import write_text_atomic

REPO = Path(__file__).resolve().parents[1]
Runner = Callable[[list[str], Path], int]  # (job arguments, log file) -> exit code


# ---- JSON files of a campaign folder ------------------------------------------------------------------------------
def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None where there is no such file; a damaged file is refused by name."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a JSON file ({err}): damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object: damaged")
    return data


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


@functools.cache
def device_info() -> dict:
    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        return {"device": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}
    except Exception as err:  # the report still builds without it
        return {"device": f"unknown ({err})"}


def claim_folder(path: Path, settings: dict, what: str, ignore: tuple[str, ...] = ()) -> None:
    """Record ``settings`` (with the start time and the device) in ``path`` when the folder is new; a later call
    continues only with the same settings (keys in ``ignore`` may differ), else it refuses, naming them."""
    stored = read_json(path)
    if stored is not None:
        changed = [k for k in settings if k not in ignore and stored.get(k) != settings[k]]
        if changed:
            raise ValueError(
                f"{path.parent} holds {what} with other settings ({', '.join(changed)}: "
                f"{[stored.get(k) for k in changed]} vs {[settings[k] for k in changed]}); use another --out"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(path, {**settings, "started": started, **device_info()})


# ---- checkpoints --------------------------------------------------------------------------------------------------
def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(global step, path) of the run's checkpoints, oldest first (names hold the step: stepNNNNNN.ckpt)."""
    found = []
    for path in (run_dir / "checkpoints").glob("*.ckpt"):
        match = re.search(r"step(\d+)\.ckpt$", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def prune_checkpoints(run_dir: Path, keep: tuple[int, ...] = ()) -> tuple[int, Path] | None:
    """Delete all but the newest checkpoint and those at the steps in ``keep``; return the newest. (Checkpoints
    of the paper model are 3 GB each; only the newest is resumed from.)"""
    from lighthouse.checkpoint.files import remove_checkpoint_file  # with its checksum file

    found = checkpoints(run_dir)
    for step, path in found[:-1]:
        if step not in keep:
            remove_checkpoint_file(path)
    return found[-1] if found else None


# ---- jobs ---------------------------------------------------------------------------------------------------------
def run_logged(cmd: list[str], log: Path, **env: str) -> int:
    """Run ``cmd`` from the repository root with its output in ``log``; ``env`` adds to the environment."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def record_launch(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    launches = run_dir / "launches.jsonl"
    if launches.exists() and not launches.read_bytes().endswith(b"\n"):
        # A record cut off by a kill mid-write: without this, the new one would be appended onto it and both lost.
        write_text_atomic(launches, "".join(json.dumps(r) + "\n" for r in read_json_lines(launches)))
    with open(launches, "a") as f:
        f.write(json.dumps(record) + "\n")


def launch(runner: Runner, run_dir: Path, args: list[str], kind: str, resumed_from: int | None, who: str) -> int:
    """Run one job of ``run_dir`` with its log in ``launch-<n>.log`` and a record line in ``launches.jsonl`` (n:
    the jobs recorded before it, or the next number no log has where a kill left a log without its record); a
    failure is said on stdout as ``<who>: <run> <kind> failed``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    launches = run_dir / "launches.jsonl"
    n = len(read_json_lines(launches))
    while (run_dir / f"launch-{n}.log").exists():  # a job whose record was cut off by a kill keeps its log
        n += 1
    started = time.time()
    rc = runner(args, run_dir / f"launch-{n}.log")
    record = {"kind": kind, "start": started, "end": time.time(), "rc": rc, "resumed_from": resumed_from}
    # The GPU this job ran on: one seed's runs can span sessions and machines (the report names them per run).
    record_launch(run_dir, {**record, "device": device_info()["device"]})
    if rc != 0:
        print(f"{who}: {run_dir.name} {kind} failed (exit code {rc}); see {run_dir}/launch-{n}.log")
    return rc


def time_budget(deadline: float, reserve_s: float) -> dict:
    """The TimeBudget callback of a job, as a config entry: it stops with a checkpoint before ``deadline``."""
    return {
        "class_path": "lighthouse.train.time_budget.TimeBudget",
        "init_args": {"deadline": deadline, "reserve_s": reserve_s},
    }


# ---- command line -------------------------------------------------------------------------------------------------
def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the train.py overrides after ``--``)."""
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def add_budget_options(
    parser: argparse.ArgumentParser, *, reserve_s: float, min_launch: float, min_eval: float
) -> None:
    """The options that fit one invocation's jobs into its wall-clock budget (defaults per campaign)."""
    parser.add_argument("--max-minutes", type=float, default=9.0, help="wall-clock budget of this invocation")
    parser.add_argument("--reserve-s", type=float, default=reserve_s, help="kept per job for its checkpoint and exit")
    parser.add_argument("--exit-margin-s", type=float, default=15.0, help="kept for this script after the last job")
    parser.add_argument(
        "--min-launch-minutes", type=float, default=min_launch, help="do not start training with less left"
    )
    parser.add_argument(
        "--min-eval-minutes", type=float, default=min_eval, help="do not start an evaluation with less left"
    )
