"""Run folders that users copy, move, share and abandon: `last` goes by the recorded step, one process holds a run,
a failed launch takes back what it wrote, validate and export resolve `last`, Ctrl-C and kills lose nothing."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from training_helpers import cli_subprocess_args, fit, logged_scalars, only_run_dir, run_dirs, tiny_config

from lighthouse.checkpoint.files import recorded_step, verify
from lighthouse.train import exits
from lighthouse.train.cli import main
from lighthouse.train.run_dir import find_checkpoint, sweep_orphans
from lighthouse.train.run_lock import LOCK_NAME, lock_run, try_lock


def steps_of(folder) -> dict[str, int]:
    return {p.name: recorded_step(p) for p in sorted(folder.glob("*.ckpt"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run (4 steps, checkpoints at 2 and 4) in its own folder; tests copy it."""
    base = tmp_path_factory.mktemp("trained")
    fit(base, tiny_config(base, "run", max_steps=4, every_n=2, version=None))
    return base


def copy_of(trained, tmp_path):
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return only_run_dir(tmp_path / "logs" / "run")


def test_moved_run_resumes_into_last_ckpt_and_export_follows(trained, tmp_path):
    """Before, after `mv A B` the resumed state went to last-v1.ckpt while last.ckpt stayed at the old step, and
    exporting B/.../last.ckpt exported the old model."""
    run = copy_of(trained, tmp_path)
    moved = run.parent / "moved"
    run.rename(moved)
    # A run of the same name killed during its first save: only a torn file, no checkpoint for `last` to find.
    abandoned = run.parent / "abandoned" / "checkpoints"
    abandoned.mkdir(parents=True)
    (abandoned / "last.ckpt.tmp-4242").write_bytes(b"\0" * 4096)

    fit(tmp_path, tiny_config(tmp_path, "run", max_steps=6, every_n=2, version=None), ckpt_path="last", tag="resume")
    assert steps_of(moved / "checkpoints") == {
        "last.ckpt": 6,
        "step000002.ckpt": 2,
        "step000004.ckpt": 4,
        "step000006.ckpt": 6,
    }
    assert verify(moved / "checkpoints" / "last.ckpt").status == "ok"
    assert not (abandoned / "last.ckpt.tmp-4242").exists()  # swept at the launch, though not the run continued

    from lighthouse.export import main as export

    export(["--ckpt", str(moved / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "a")])
    assert json.loads((tmp_path / "a" / "lighthouse.json").read_text())["global_step"] == 6


def test_copied_run_resumes_from_its_highest_step(trained, tmp_path):
    """`cp -r` without -p gives the files new modification times in copy order; before, `last` took the newest
    modified file, here step000002.ckpt."""
    run = copy_of(trained, tmp_path)
    copy = run.parent / "copy"
    shutil.copytree(run, copy, copy_function=shutil.copy)
    shutil.rmtree(run)
    now = time.time()
    for age, name in enumerate(["step000002.ckpt", "last.ckpt", "step000004.ckpt"]):
        os.utime(copy / "checkpoints" / name, (now - age, now - age))
    config = tiny_config(tmp_path, "run", max_steps=6, every_n=2, version="copy")
    cli = fit(tmp_path, config, ckpt_path="last", tag="resume")
    assert cli.trainer.ckpt_path == str(copy / "checkpoints" / "last.ckpt")
    assert sorted(logged_scalars(copy, "train/loss")) == [1, 2, 3, 4, 5, 6]


def test_export_resolves_a_run_or_run_name(trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path)
    group = run.parent
    last = run / "checkpoints" / "last.ckpt"
    for arg in (group, f"{group}/last", run, f"{run}/last", run / "checkpoints", last):
        assert find_checkpoint(str(arg)) == last
    (group / "newer-but-empty").mkdir()  # a folder `ls -d | tail -n 1` would pick
    from lighthouse.export import main as export

    export(["--ckpt", str(group), "--out", str(tmp_path / "hf")])
    assert f"exporting {last}" in capsys.readouterr().out
    assert json.loads((tmp_path / "hf" / "lighthouse.json").read_text())["global_step"] == 4
    from lighthouse.generate import main as generate

    generate(["--ckpt", str(group), "--prompt", "the", "--max-new-tokens", "3", "--device", "cpu"])
    with pytest.raises(FileNotFoundError, match="no usable checkpoint in .*newer-but-empty"):
        find_checkpoint(str(group / "newer-but-empty"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_checkpoint(str(tmp_path / "nothing"))


def test_validate_last_without_checkpoint_fails_and_creates_nothing(tmp_path, capsys, monkeypatch):
    """Before: "No checkpoint will be loaded", an untrained model validated, exit 0, an empty run folder left."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    config = tiny_config(tmp_path, "nothing", version=None)
    path = tmp_path / "validate.yaml"
    path.write_text(json.dumps(config))
    code = exits.run(lambda _: main(["validate", "--config", str(path), "--ckpt_path", "last"]))
    err = capsys.readouterr().err
    assert code == exits.EXIT_USAGE and "Traceback" not in err
    assert f"--ckpt_path last: no checkpoint in {tmp_path / 'logs' / 'nothing'}/*/checkpoints/" in err
    assert not (tmp_path / "logs" / "nothing").exists() or not any((tmp_path / "logs" / "nothing").iterdir())


def test_validate_last_validates_the_newest_checkpoint(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    path = tmp_path / "validate.yaml"
    path.write_text(json.dumps(tiny_config(tmp_path, "run", version=None)))
    cli = main(["validate", "--config", str(path), "--ckpt_path", "last"])
    assert cli.trainer.ckpt_path == str(run / "checkpoints" / "last.ckpt")


def test_fit_resumes_a_run_folder_and_refuses_best(trained, tmp_path, capsys, caplog, monkeypatch):
    """Before, `--ckpt_path <run folder>` said the folder was no checkpoint of a run, made a new run folder, then
    failed with "checkpoint file not found"; `best` ended in a raw Lightning error."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    caplog.set_level(logging.INFO)
    run = copy_of(trained, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    for tag, folder, max_steps in (("run", run, 5), ("checkpoints", run / "checkpoints", 6)):
        config = tiny_config(tmp_path, "run", max_steps=max_steps, every_n=2, version=None)
        cli = fit(tmp_path, config, ckpt_path=str(folder), tag=tag)
        assert cli.trainer.ckpt_path == str(last) and cli.trainer.global_step == max_steps
        assert f"--ckpt_path {folder}: loading {last}" in caplog.text
    assert run_dirs(run.parent) == [run] and recorded_step(last) == 6
    assert "ckpt_path: " + str(run) in (run / "config.1.yaml").read_text()  # what was asked for, not the file

    empty = tmp_path / "empty"
    empty.mkdir()
    config = tiny_config(tmp_path, "run", max_steps=8, every_n=2, version=None)
    for arg, message in ((empty, f"--ckpt_path {empty}: no usable checkpoint in"), ("best", "--ckpt_path best: ")):
        code = exits.run(lambda _, arg=arg: fit(tmp_path, config, ckpt_path=str(arg), tag="refused"))
        err = capsys.readouterr().err
        assert code == exits.EXIT_USAGE and message in err and "Traceback" not in err
    assert run_dirs(run.parent) == [run]


def test_validate_of_a_checkpoint_stays_with_its_run_and_prints_its_step(trained, tmp_path, capsys, recwarn):
    """Before, every validate made a new run folder without a checkpoint and printed "validation at step 0" (and
    Lightning's note that the checkpoint's callback states were not restored, which validation never needs)."""
    run = copy_of(trained, tmp_path)
    config = tiny_config(tmp_path, "run", version=None)
    config["trainer"]["enable_progress_bar"] = True
    path = tmp_path / "validate.yaml"
    path.write_text(json.dumps(config))
    for arg, step in (("last", 4), (str(run / "checkpoints" / "step000002.ckpt"), 2), (str(run), 4)):
        main(["validate", "--config", str(path), "--ckpt_path", arg])
        assert f"validation at step {step} |" in capsys.readouterr().out
    assert run_dirs(run.parent) == [run]
    validations = run_dirs(run / "validate")
    assert len(validations) == 3 and all((v / "config.yaml").exists() for v in validations)
    # Charted at the checkpoint's step too (Lightning's count in a lone validate is 0).
    assert [sorted(logged_scalars(v, "val/loss")) for v in validations] == [[4], [2], [4]]
    assert sorted(logged_scalars(run, "val/loss")) == [2, 4]  # the run's curves are the training's alone
    assert not [w for w in recwarn if "callbacks used to create the checkpoint" in str(w.message)]


def test_failed_launch_leaves_no_run_folder(trained, tmp_path, capsys, monkeypatch):
    """Before, a missing --ckpt_path left logs/<name>/<version>/ with config.yaml, data_manifest.json and an event
    file, which `ls -d logs/demo/*/ | tail -n 1` then picked."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    config = tiny_config(tmp_path, "fresh", version=None)
    code = exits.run(lambda _: fit(tmp_path, config, ckpt_path=str(tmp_path / "missing.ckpt")))
    assert code == exits.EXIT_USAGE and "missing.ckpt: no such file" in capsys.readouterr().err
    assert run_dirs(tmp_path / "logs" / "fresh") == []

    # A refusal after the run folder was claimed (a recovery config that found no checkpoint): not even the empty
    # group folder stays.
    recover = tiny_config(tmp_path, "refused", "demo_recover.yaml", attention="sdpa", switch_step=0, version=None)
    assert exits.run(lambda _: fit(tmp_path, recover, ckpt_path="last")) == exits.EXIT_USAGE
    assert "stage.min_start_step=150" in capsys.readouterr().err
    assert not (tmp_path / "logs" / "refused").exists()

    # A failure found only after setup wrote its files (a checkpoint of another shape), in a fresh folder ...
    other = trained / "logs" / "run"
    ckpt = only_run_dir(other) / "checkpoints" / "last.ckpt"
    wide = tiny_config(tmp_path, "fresh", version=None)
    wide["model"]["arch"]["dim"] = 64
    assert exits.run(lambda _: fit(tmp_path, wide, ckpt_path=str(ckpt))) == exits.EXIT_USAGE
    assert run_dirs(tmp_path / "logs" / "fresh") == []
    # ... and in an existing run, which keeps exactly what it had.
    run = copy_of(trained, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    wide = tiny_config(tmp_path, "run", version=None)
    wide["model"]["arch"]["dim"] = 64
    assert exits.run(lambda _: fit(tmp_path, wide, ckpt_path="last")) == exits.EXIT_USAGE
    assert "parameter shapes differ" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_run_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    held = lock_run(tmp_path)
    assert f"pid {os.getpid()} on " in (tmp_path / LOCK_NAME).read_text()
    assert try_lock(tmp_path) is None  # another open file, even in this process
    held.release()
    assert not (tmp_path / LOCK_NAME).exists()
    # A holder killed with SIGKILL leaves its file, but not its lock.
    code = "import os, signal, sys; from lighthouse.train.run_lock import lock_run; lock_run(sys.argv[1]); "
    code += "os.kill(os.getpid(), signal.SIGKILL)"
    env = {**os.environ, "PYTHONPATH": str(os.path.dirname(os.path.dirname(__file__)) + "/src")}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=False, timeout=120)
    assert (tmp_path / LOCK_NAME).exists()
    lock = try_lock(tmp_path)
    assert lock is not None and f"pid {os.getpid()} on " in (tmp_path / LOCK_NAME).read_text()
    lock.release()


@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_second_resume_of_a_held_run_is_refused_and_writes_nothing(trained, tmp_path):
    """Before, two resumes started together both trained into the same folder and exited 0."""
    run = copy_of(trained, tmp_path)
    held = lock_run(run)  # a first resume, as far as the folder can tell
    try:
        before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
        config = tiny_config(tmp_path, "run", max_steps=6, every_n=2, version=None)
        cmd, env = cli_subprocess_args(tmp_path, config, "second", ["--ckpt_path", "last"])
        env.pop("LIGHTHOUSE_DEBUG", None)
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert f"run folder {run} is in use by pid {os.getpid()} on " in result.stderr
        assert "Traceback" not in result.stderr
        assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before
    finally:
        held.release()


def test_sweep_leaves_a_held_run_alone(tmp_path):
    for name in ("free", "held"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "checkpoints" / "step000004.ckpt.tmp-77").write_bytes(b"torn")
    held = lock_run(tmp_path / "held")
    try:
        assert [p.parent.parent.name for p in sweep_orphans(tmp_path)] == ["free"]
    finally:
        held.release()
    assert (tmp_path / "held" / "checkpoints" / "step000004.ckpt.tmp-77").exists()


def start(tmp_path, config, tag, extra=()):
    cmd, env = cli_subprocess_args(tmp_path, config, tag, list(extra))
    env.pop("LIGHTHOUSE_DEBUG", None)
    stderr = open(tmp_path / f"{tag}.stderr", "wb")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def start_slow(tmp_path, tag, seconds):
    """A 12-step run (checkpoints every 4) whose steps each pause ``seconds``; (process, its progress file)."""
    progress = tmp_path / "progress"
    config = tiny_config(tmp_path, tag, max_steps=12, every_n=4)
    config["trainer"]["callbacks"].append(
        {"class_path": "plugins.SlowSteps", "init_args": {"seconds": seconds, "progress": str(progress)}}
    )
    return start(tmp_path, config, tag), progress


def wait_for_step(progress, process, step, timeout=240):
    deadline = time.monotonic() + timeout
    while not (progress.exists() and int(progress.read_text() or 0) >= step):
        assert process.poll() is None, f"training exited ({process.returncode}) early"
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_saves_the_step_reached_and_exits_130(tmp_path):
    """Before: exit 1, nothing saved after the last periodic checkpoint."""
    process, progress = start_slow(tmp_path, "int", seconds=0.5)
    wait_for_step(progress, process, 5)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130, (tmp_path / "int.stderr").read_text()[-3000:]
    last = tmp_path / "logs" / "int" / "checkpoints" / "last.ckpt"
    assert 5 <= torch.load(last, weights_only=True)["global_step"] < 8 and verify(last).status == "ok"
    assert "stopped by Ctrl-C" in (tmp_path / "int.stderr").read_text()


@pytest.mark.slow
def test_second_ctrl_c_aborts_at_once(tmp_path):
    process, progress = start_slow(tmp_path, "abort", seconds=30)
    wait_for_step(progress, process, 1)
    process.send_signal(signal.SIGINT)  # would save after this step's 30 s pause ...
    time.sleep(0.5)
    began = time.monotonic()
    process.send_signal(signal.SIGINT)  # ... but the second press ends it now
    assert process.wait(timeout=60) == 130
    assert time.monotonic() - began < 20
    assert "interrupted (Ctrl-C): nothing more saved" in (tmp_path / "abort.stderr").read_text()
    assert not (tmp_path / "logs" / "abort" / "checkpoints").exists()


@pytest.mark.slow
def test_metrics_of_the_steps_in_a_checkpoint_survive_a_kill_right_after_it(tmp_path):
    """Before, the train/loss of step 4 was logged only after the step-4 checkpoint was written: a kill in between
    lost it for good (the resumed run starts after step 4)."""
    config = tiny_config(tmp_path, "kill", max_steps=8, every_n=4)
    config["trainer"]["plugins"] = [{"class_path": "plugins.KillAfterSave", "init_args": {"step": 4}}]
    cmd, env = cli_subprocess_args(tmp_path, config, "kill")
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert sorted(logged_scalars(tmp_path / "logs" / "kill", "train/loss")) == [1, 2, 3, 4]


def test_metrics_are_logged_once_per_step(tmp_path):
    from lighthouse.eval.run_logs import EVENTS_GLOB, _read_events

    fit(tmp_path, tiny_config(tmp_path, "once", max_steps=4, every_n=2))
    (events,) = (tmp_path / "logs" / "once").glob(EVENTS_GLOB)
    steps = [event.step for event in _read_events(events).Scalars("train/loss")]
    assert steps == [1, 2, 3, 4]


def test_a_save_inside_a_gradient_accumulation_is_named_by_the_step_it_holds(tmp_path, monkeypatch):
    """A SIGTERM between two micro-batches saves global step 7 while the logged "step" (lighthouse.train.logger)
    already names step 8, the one the accumulation is building: the file is step000007.ckpt, not step000008."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from lighthouse.checkpoint.last import save_step_reached

    callback = ModelCheckpoint(dirpath=tmp_path, filename="step{step:06d}", auto_insert_metric_name=False)
    saved = []
    monkeypatch.setattr(callback, "_monitor_candidates", lambda trainer: {"step": torch.tensor(8)})
    monkeypatch.setattr(callback, "_save_checkpoint", lambda trainer, path: saved.append(os.path.basename(path)))
    monkeypatch.setattr(callback, "_save_last_checkpoint", lambda trainer, metrics: None)
    trainer = SimpleNamespace(fast_dev_run=False, sanity_checking=False, global_step=7, checkpoint_callbacks=[callback])
    save_step_reached(trainer, "SIGTERM")
    assert saved == ["step000007.ckpt"]
