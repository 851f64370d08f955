"""Fault injection against the real ``train.py``: random SIGKILLs (at random steps and mid-save), SIGTERMs, Ctrl-C
(SIGINT), a diverging LR, damaged checkpoint files, run folders copied (``cp -r``) or moved (``mv``) and then resumed
and exported, and two resumes of one run started together; prints each input's outcome and the totals.

    PYTHONPATH=src python tests/fault_injection.py --kills 10 --sigterms 3 --sigints 1 --seed 0

(A script beside the tests, not a test: it takes minutes. It uses the tests' CLI helpers, found because Python puts
this script's folder first on sys.path.)

Every run is a subprocess with a timeout on a tiny CPU config (tests/training_helpers.tiny_config). Outcomes:
- recovered: the killed/stopped run resumed with ``--ckpt_path last`` from the newest checkpoint that verifies and
  its losses equal an uninterrupted run's, bit for bit;
- clear error: a bad input was refused with exit code 1/2 and a message, no traceback;
- hang: a run did not finish within the timeout;
- silent failure: exit 0 with the wrong result (other losses, a damaged file loaded, a NaN in a checkpoint);
- checkpoints lost: a resume started before the newest checkpoint that verified after the fault.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from training_helpers import cli_subprocess_args, logged_scalars, tiny_config

from lighthouse.checkpoint.files import candidates, verify

REPO = Path(__file__).resolve().parents[1]

MAX_STEPS, EVERY_N, STEP_SLEEP = 12, 4, 0.3
RESTORED = re.compile(r"Restoring states from the checkpoint path at (\S+)")


class Hang(Exception):
    pass


def run(folder: Path, tag: str, config: dict, extra=(), timeout: float = 600) -> subprocess.CompletedProcess:
    cmd, env = cli_subprocess_args(folder, config, tag, list(extra))
    try:
        return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise Hang(f"{tag} did not finish in {timeout:.0f} s") from err


def start(folder: Path, tag: str, config: dict) -> subprocess.Popen:
    cmd, env = cli_subprocess_args(folder, config, tag)
    return subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(condition, process: subprocess.Popen, timeout: float = 600) -> bool:
    """True once ``condition()`` holds; False if the process exited first; Hang after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            process.kill()
            raise Hang("the trigger never came")
        time.sleep(0.02)
    return True


def config_for(folder: Path, name: str, callbacks=(), plugins=None, every_n: int = EVERY_N) -> dict:
    config = tiny_config(folder, name, max_steps=MAX_STEPS, every_n=every_n)
    config["trainer"]["callbacks"] += list(callbacks)
    if plugins is not None:
        config["trainer"]["plugins"] = plugins
    return config


def usable_steps(ckpt_dir: Path, verified_only: bool = False) -> dict[str, int]:
    """name -> global step of every checkpoint in the folder that is intact (checksum ok, or none when not
    ``verified_only``) and holds only finite values."""
    found = {}
    for path in candidates(ckpt_dir):
        verdict = verify(path)
        if verdict.status != "ok" and (verified_only or not verdict.usable):
            continue
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:
            continue
        if all(torch.isfinite(t).all() for t in state["state_dict"].values()):
            found[path.name] = state["global_step"]
    return found


def resume_and_judge(folder: Path, name: str, reference: dict, notes: list[str]) -> tuple[str, int]:
    """Resume ``name`` with --ckpt_path last; (outcome, checkpoints lost)."""
    before = usable_steps(folder / "logs" / name / "checkpoints")
    result = run(folder, f"resume-{name}", config_for(folder, name), ["--ckpt_path", "last"])
    if result.returncode != 0:
        notes.append(result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "no output")
        return "failed resume", 0
    match = RESTORED.search(result.stdout + result.stderr)
    source = Path(match.group(1)).name if match else None
    if source is not None and source not in before:
        notes.append(f"resumed from {source}, which was not intact")
        return "silent failure", 0
    start_step = before[source] if source else 0
    notes.append(f"resumed from {source or 'scratch'} (step {start_step})")
    lost = int(bool(before) and start_step < max(before.values()))
    got = logged_scalars(folder / "logs" / name, "train/loss")
    resumed = {k: v for k, v in got.items() if k > start_step}
    same = resumed == {k: v for k, v in reference.items() if k > start_step} and max(got) == MAX_STEPS
    return ("recovered" if same else "silent failure"), lost


def kill_trial(root: Path, i: int, rng: random.Random, reference: dict) -> tuple[str, str, int, list[str]]:
    folder = root / f"kill{i}"
    name = "run"
    if rng.random() < 0.5:  # at a random step, at a random moment within it
        step = rng.randint(1, MAX_STEPS - 1)
        progress = folder / "progress"
        folder.mkdir(parents=True)
        config = config_for(
            folder,
            name,
            [{"class_path": "plugins.SlowSteps", "init_args": {"seconds": STEP_SLEEP, "progress": str(progress)}}],
        )
        what = f"SIGKILL in step {step}"
        process = start(folder, name, config)
        reached = wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= step, process)
        time.sleep(rng.uniform(0, 1.5 * STEP_SLEEP))  # in the pause, the next step, or a save
    else:  # mid-save: the first half of a checkpoint is on disk
        step = rng.choice(range(EVERY_N, MAX_STEPS, EVERY_N))
        only = rng.choice([None, "last.ckpt"])
        marker = folder / "writing"
        folder.mkdir(parents=True)
        config = config_for(
            folder,
            name,
            plugins=[
                {
                    "class_path": "plugins.SlowCheckpointIO",
                    "init_args": {"slow_from_step": step, "marker": str(marker), "only_name": only},
                }
            ],
        )
        what = f"SIGKILL mid-save of {only or f'step{step:06d}.ckpt'} at step {step}"
        process = start(folder, name, config)
        reached = wait_until(marker.exists, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if not reached:
        return what, "silent failure", 0, [f"training exited ({process.returncode}) before the kill"]
    notes: list[str] = []
    outcome, lost = resume_and_judge(folder, name, reference, notes)
    return what, outcome, lost, notes


def sigterm_trial(
    root: Path, i: int, rng: random.Random, reference: dict, sig: int = signal.SIGTERM
) -> tuple[str, str, int, list[str]]:
    """SIGTERM (exit 143) or SIGINT, a Ctrl-C (exit 130): the step reached is saved, the resume is exact."""
    name, expected = ("SIGTERM", 143) if sig == signal.SIGTERM else ("SIGINT", 130)
    folder = root / f"{name.lower()}{i}"
    folder.mkdir(parents=True)
    step = rng.randint(1, MAX_STEPS - 2)
    progress = folder / "progress"
    config = config_for(
        folder,
        "run",
        [{"class_path": "plugins.SlowSteps", "init_args": {"seconds": STEP_SLEEP, "progress": str(progress)}}],
    )
    process = start(folder, "run", config)
    wait_until(lambda: progress.exists() and int(progress.read_text() or 0) >= step, process)
    process.send_signal(sig)
    try:
        code = process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        return f"{name} in step {step}", "hang", 0, []
    saved = usable_steps(folder / "logs" / "run" / "checkpoints", verified_only=True).get("last.ckpt")
    notes = [f"exit {code}, last.ckpt at step {saved}"]
    if code != expected or saved is None or saved < step:
        return f"{name} in step {step}", "silent failure", 0, notes
    outcome, lost = resume_and_judge(folder, "run", reference, notes)
    return f"{name} in step {step}", outcome, lost, notes


def corrupt(path: Path, kind: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if kind == "bit flip in tensor data":
        data[rng.randrange(len(data) // 4, len(data) * 3 // 4)] ^= 1 << rng.randrange(8)
    elif kind == "bit flip in the header":
        data[rng.randrange(0, 512)] ^= 1 << rng.randrange(8)
    elif kind == "truncated":
        data = data[: rng.randrange(1, len(data))]
    elif kind == "garbage":
        data = bytearray(rng.randbytes(len(data)))
    elif kind == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


CORRUPTIONS = ("bit flip in tensor data", "bit flip in the header", "truncated", "garbage", "empty")


def explicit_load(folder: Path, path: Path, what: str):
    """``--ckpt_path <damaged file>`` must be refused: exit 1 or 2, a message, no traceback."""
    result = run(folder, "explicit", config_for(folder, "run"), ["--ckpt_path", str(path)])
    clear = result.returncode in (1, 2) and "Traceback" not in result.stderr and "error:" in result.stderr
    outcome = "clear error" if clear else ("silent failure" if result.returncode == 0 else "unclear error")
    message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return what, outcome, 0, [message[0][:170] if message else result.stderr.strip()[-170:]]


def corrupt_trials(root: Path, finished: Path, rng: random.Random, reference: dict):
    """Each corruption of last.ckpt (and its same-step twin), loaded explicitly (must be a clear error) and through
    --ckpt_path last (must fall back to the newest intact checkpoint); without the checksum file too, where the
    damage is detectable at all."""
    for kind in CORRUPTIONS:
        folder = root / f"corrupt-{kind.replace(' ', '-')}"
        shutil.copytree(finished, folder, ignore=shutil.ignore_patterns("*.yaml"))
        ckpt_dir = folder / "logs" / "run" / "checkpoints"
        corrupt(ckpt_dir / "last.ckpt", kind, rng)
        corrupt(ckpt_dir / f"step{MAX_STEPS:06d}.ckpt", kind, rng)  # the fallback must go further back
        # The damaged bytes, kept now: the resume below writes a healthy last.ckpt over the damaged one.
        damaged = (ckpt_dir / "last.ckpt").read_bytes()
        yield explicit_load(folder, ckpt_dir / "last.ckpt", f"{kind}, --ckpt_path last.ckpt")
        notes: list[str] = []
        outcome, lost = resume_and_judge(folder, "run", reference, notes)
        yield f"{kind}, --ckpt_path last", outcome, lost, notes
        if kind in ("truncated", "garbage", "empty"):  # a bit flip without a checksum is undetectable by design
            (ckpt_dir / "bare.ckpt").write_bytes(damaged)
            yield explicit_load(folder, ckpt_dir / "bare.ckpt", f"{kind}, no checksum, --ckpt_path bare.ckpt")


BLOWN = 100.0  # max|w| of the tiny model stays near 1 when healthy; LR 1e6 pushed it to 4.8e5 while finite


def blown_checkpoints(ckpt_dir: Path) -> list[str]:
    """Checkpoints whose weights hold a NaN/inf or are finite but blown up (max|w| > BLOWN)."""
    bad = []
    for path in candidates(ckpt_dir):
        weights = torch.load(path, weights_only=True, map_location="cpu")["state_dict"].values()
        if not all(torch.isfinite(w).all() and float(w.abs().max(initial=0)) <= BLOWN for w in weights):
            bad.append(path.name)
    return bad


def diverging_trial(root: Path) -> tuple[str, str, int, list[str]]:
    """LR 1e6 (a finite blow-up first, NaN later): a clear error only if the run stops with exit 1, no traceback,
    no checkpoint on disk holds blown weights and the one named as last good is not blown."""
    folder = root / "diverge"
    folder.mkdir(parents=True)
    result = run(folder, "run", config_for(folder, "run", every_n=1), ["--model.optimizer.init_args.lr", "1e6"])
    ckpt_dir = folder / "logs" / "run" / "checkpoints"
    every, blown = list(candidates(ckpt_dir)), blown_checkpoints(ckpt_dir)
    named = re.search(r"Last good checkpoint[^:]*: (\S+)", result.stderr)
    named_blown = named is not None and Path(named.group(1)).name in blown
    clear = result.returncode == 1 and "Traceback" not in result.stderr and named is not None
    outcome = "clear error" if clear and not blown and not named_blown else "silent failure"
    note = f"exit {result.returncode}, {len(blown)} of {len(every)} checkpoints blown or non-finite"
    return "lr 1e6 (diverges)", outcome, 0, [note + (f", named {named.group(1)}" if named else "")]


def exported_step(folder: Path, ckpt: str) -> tuple[int | None, str]:
    """The global step ``src/export.py --ckpt <ckpt>`` exported (None on failure) and a note."""
    out = folder / f"exported-{len(list(folder.glob('exported-*')))}"
    cmd = [sys.executable, str(REPO / "src" / "export.py"), "--ckpt", ckpt, "--out", str(out)]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return None, f"export exit {result.returncode}: {result.stderr.strip()[-150:]}"
    return json.loads((out / "lighthouse.json").read_text())["global_step"], "exported"


def relocated_trials(root: Path, finished: Path):
    """The finished run copied with ``cp -r`` (new modification times, here the oldest checkpoint's newest) or moved
    with ``mv``, then resumed for 4 more steps and exported. Recovered: the resume restored the highest step, wrote
    no ``-v1`` copy, and the export (of the moved ``last.ckpt``; of the copied run by its name) holds the new step."""
    for how in ("cp -r", "mv"):
        folder = root / f"relocated-{how.split()[0]}"
        shutil.copytree(finished, folder, ignore=shutil.ignore_patterns("*.yaml"))
        source, name = folder / "logs" / "run", "copy" if how == "cp -r" else "moved"
        target = folder / "logs" / name
        if how == "mv":
            source.rename(target)
        else:
            shutil.copytree(source, target, copy_function=shutil.copy)
            now = time.time()
            order = ["last.ckpt", *(f"step{s:06d}.ckpt" for s in range(MAX_STEPS, 0, -EVERY_N))]
            for age, checkpoint in enumerate(order):  # the lowest step modified last, last.ckpt first
                os.utime(target / "checkpoints" / checkpoint, (now - 10 + age, now - 10 + age))
        config = tiny_config(folder, name, max_steps=MAX_STEPS + 4, every_n=EVERY_N)
        before = usable_steps(target / "checkpoints")
        result = run(folder, f"resume-{name}", config, ["--ckpt_path", "last"])
        match = RESTORED.search(result.stdout + result.stderr)
        restored = before.get(Path(match.group(1)).name) if match else None
        versions = sorted(p.name for p in (target / "checkpoints").glob("*-v*.ckpt"))
        ckpt = str(target / "checkpoints" / "last.ckpt") if how == "mv" else str(target)
        step, note = exported_step(folder, ckpt) if result.returncode == 0 else (None, "no export")
        notes = [f"exit {result.returncode}, restored step {restored}, -v copies {versions or 'none'}, {note} {step}"]
        good = result.returncode == 0 and restored == MAX_STEPS and not versions and step == MAX_STEPS + 4
        yield f"{how} of a run, resume, export", "recovered" if good else "silent failure", 0, notes


def concurrent_trial(root: Path, finished: Path) -> tuple[str, str, int, list[str]]:
    """Two ``--ckpt_path last`` resumes of one run started together: one trains, the other is refused (exit 2,
    naming the holder) and writes nothing."""
    folder = root / "concurrent"
    shutil.copytree(finished, folder, ignore=shutil.ignore_patterns("*.yaml"))
    config = tiny_config(folder, "run", max_steps=MAX_STEPS + 4, every_n=EVERY_N)
    config["trainer"]["callbacks"] += [{"class_path": "plugins.SlowSteps", "init_args": {"seconds": STEP_SLEEP}}]
    events_before = len(list((folder / "logs" / "run").glob("events.out.tfevents.*")))
    processes = []
    for tag in ("first", "second"):
        cmd, env = cli_subprocess_args(folder, config, tag, ["--ckpt_path", "last"])
        processes.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        results = [(p.wait(timeout=600), p.stderr.read().decode(errors="replace")) for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        return "two resumes at once", "hang", 0, []
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2 and "is in use by pid" in err and "Traceback" not in err]
    run_dir = folder / "logs" / "run"
    extra = sorted(p.name for p in run_dir.glob("**/*-v*.ckpt")) + sorted(p.name for p in run_dir.glob("config.*.yaml"))
    events = len(list(run_dir.glob("events.out.tfevents.*"))) - events_before
    extra += [f"{events} new event files"] if events != 1 else []
    notes = [f"exits {codes}, extra files {extra or 'none'}"]
    clear = codes == [0, 2] and refused and not extra
    return "two resumes at once", "clear error" if clear else "silent failure", 0, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--sigterms", type=int, default=3)
    parser.add_argument("--sigints", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="fault_injection_"))
    began = time.monotonic()
    finished = root / "reference"
    finished.mkdir()
    result = run(finished, "run", config_for(finished, "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    reference = logged_scalars(finished / "logs" / "run", "train/loss")

    def trials():
        for i in range(args.kills):
            yield lambda i=i: kill_trial(root, i, rng, reference)
        for i in range(args.sigterms):
            yield lambda i=i: sigterm_trial(root, i, rng, reference)
        for i in range(args.sigints):
            yield lambda i=i: sigterm_trial(root, i, rng, reference, signal.SIGINT)
        yield lambda: diverging_trial(root)
        yield lambda: concurrent_trial(root, finished)

    rows = []
    for trial in trials():
        try:
            rows.append(trial())
        except Hang as err:
            rows.append(("(see note)", "hang", 0, [str(err)]))
        print(f"{rows[-1][1]:>15} | {rows[-1][0]:<45} | lost {rows[-1][2]} | {'; '.join(rows[-1][3])}", flush=True)
    for row in itertools.chain(relocated_trials(root, finished), corrupt_trials(root, finished, rng, reference)):
        rows.append(row)
        print(f"{row[1]:>15} | {row[0]:<45} | lost {row[2]} | {'; '.join(row[3])}", flush=True)
    count = {k: sum(r[1] == k for r in rows) for k in ("recovered", "clear error", "hang", "silent failure")}
    other = len(rows) - sum(count.values())
    print(
        f"\ninputs tried: {len(rows)}, recovered exactly: {count['recovered']}, clear errors: "
        f"{count['clear error']}, hangs: {count['hang']}, silent failures: {count['silent failure']}, "
        f"other failures: {other}, checkpoints lost: {sum(r[2] for r in rows)} "
        f"({time.monotonic() - began:.0f} s, seed {args.seed})"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"work folder: {root}")


if __name__ == "__main__":
    main()
