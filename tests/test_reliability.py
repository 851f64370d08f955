"""Bad configs fail before training; crashes, kills, SIGTERM, full disks and NaNs lose nothing and never poison a
checkpoint; deterministic runs repeat bitwise."""

import re
import signal
import subprocess
import time

import pytest
import torch
from test_checkpoint_files import flip_bit
from training_helpers import cli_subprocess_args, fit, logged_scalars, tiny_config

from lighthouse.checkpoint.files import verify
from lighthouse.checkpoint.guards import NonFiniteError
from lighthouse.train import exits

# Each override is applied to a tiny Lighthouse config; the error must name the field and the valid range.
BAD_SETTINGS = {
    "levels": (["--model.arch.lighthouse.levels", "1"], "levels=1 is invalid: it must be an integer >= 2"),
    "pooling": (["--model.arch.lighthouse.pooling_factor", "6"], "pooling_factor=6 is invalid: it must be a power"),
    "topk": (["--model.arch.lighthouse.topk", "200"], "topk=200 is invalid: it must be a positive multiple of 128"),
    "seq-len-rule": (["--data.seq_len", "384"], "it must be >= 128 \\* pooling_factor\\*\\*\\(levels-1\\) = 512"),
    "seq-len-multiple": (["--data.seq_len", "514"], "514 must be a multiple of pooling_factor"),
    "dense-layer-range": (["--model.arch.dense_layers", "[0, 3]"], r"\[0, n_layers-1\] = \[0, 2\]"),
    "heads-divide-dim": (["--model.arch.n_heads", "3"], "n_heads=3 must divide model.arch.dim=32"),
    "batch-size": (["--data.batch_size", "0"], "batch_size=0 is invalid: must be an integer >= 1"),
    "accumulation": (["--trainer.accumulate_grad_batches", "0"], "accumulate_grad_batches=0 is invalid"),
    "devices": (["--trainer.accelerator", "cuda", "--trainer.devices", "2"], "not available|only has|CUDA"),
    "missing-data-path": (["--data.corpus", "/no/such/corpus"], "corpus='/no/such/corpus': no such file"),
    "stage2-backend": (["--stage.stage2_backend", "flash"], "stage2_backend='flash' is not one of"),
    # Lightning would divide by it after the first step (ZeroDivisionError) or trip over it later.
    "val-check-zero": (["--trainer.val_check_interval", "0"], "val_check_interval=0 is invalid: it must be an integer"),
    "val-check-fraction": (["--trainer.val_check_interval", "1.5"], r"val_check_interval=1.5 is invalid: .* \(0, 1\]"),
    "limit-val-batches": (["--trainer.limit_val_batches", "-1"], "limit_val_batches=-1 is invalid: it must be"),
    "val-every-n-epoch": (["--trainer.check_val_every_n_epoch", "0"], "check_val_every_n_epoch=0 is invalid"),
    "sanity-steps": (["--trainer.num_sanity_val_steps", "-2"], "num_sanity_val_steps=-2 is invalid"),
    "clip-algorithm": (["--trainer.gradient_clip_algorithm", "l2"], "gradient_clip_algorithm='l2' is invalid"),
    "resume-override-shape": (["--resume_overrides", "[dim]"], "model.arch.dim changes parameter shapes"),
    "resume-override-typo": (["--resume_overrides", "[norm_epsilon]"], "'norm_epsilon' is not a model field"),
    # A launch without --config trained the default 268M model with no last step until memory ran out.
    "no-end": (["--trainer.max_steps", "-1"], r"trainer.max_steps=-1 \(no limit\) is invalid for fit"),
    "optimizer-lr": (["--model.optimizer.init_args.lr", "-1"], r"init_args.lr=-1.0 is invalid: it must be a finite"),
    "optimizer-betas": (["--model.optimizer.init_args.betas", "[0.9, 1.5]"], r"betas=\[0.9, 1.5\] is invalid"),
    "flavor-decides-nothing": (["--model.arch.flavor", "small"], "model.arch.flavor='small' sets nothing here"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_setting_fails_before_first_step(tmp_path, name, capsys, monkeypatch):
    """Through train.py's error handling: exit code 2 and the message alone, no traceback (before: 62 of 76 such
    errors printed one)."""
    if name == "devices" and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has two GPUs")
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    args, message = BAD_SETTINGS[name]
    config = tiny_config(tmp_path, "bad", max_steps=2)
    assert exits.run(lambda _: fit(tmp_path, config, extra=args)) == exits.EXIT_USAGE
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err[-2000:]
    assert not logged_scalars(tmp_path / "logs" / "bad", "train/loss")
    assert not (tmp_path / "logs" / "bad" / "checkpoints").exists()


@pytest.mark.parametrize("option", [["--optimizer", "torch.optim.SGD"], ["--lr_scheduler", "torch.optim.Adam"]])
def test_lightning_cli_optimizer_options_are_refused(tmp_path, capsys, option):
    """LightningCLI's own --optimizer replaced LitLM's optimizer, parameter groups and LR schedule with one log
    line, and its --lr_scheduler was ignored: the options are not offered."""
    config = tiny_config(tmp_path, "optimizer", max_steps=2)
    with pytest.raises(SystemExit) as stopped:
        fit(tmp_path, config, extra=option)
    assert stopped.value.code == exits.EXIT_USAGE
    assert f"unrecognized arguments: {option[0]}" in capsys.readouterr().err


def test_context_length_is_configured_once(tmp_path, capsys):
    config = tiny_config(tmp_path, "twice", max_steps=2)
    with pytest.raises(SystemExit):
        fit(tmp_path, config, extra=["--model.arch.seq_len", "1024"])
    assert 'Linked "model.arch.seq_len" must be given via "data.seq_len"' in capsys.readouterr().err


def test_cuda_only_backend_fails_before_any_data_or_model_work(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    config = tiny_config(tmp_path, "cuda", max_steps=2, attention="lighthouse")
    with pytest.raises(ValueError, match="attention='lighthouse' runs Triton kernels, which need a CUDA GPU"):
        fit(tmp_path, config)
    assert not (tmp_path / "data").exists()  # nothing tokenized, nothing built
    config = tiny_config(tmp_path, "cuda", max_steps=2, switch_step=1)
    config["stage"]["stage2_backend"] = "lighthouse"
    with pytest.raises(ValueError, match="stage.stage2_backend='lighthouse' runs Triton kernels"):
        fit(tmp_path, config)


def all_checkpoints_are_finite_and_verify(folder) -> list:
    saved = sorted(folder.glob("*.ckpt"))
    for path in saved:
        state = torch.load(path, weights_only=True)
        tensors = [
            *state["state_dict"].values(),
            *(t for s in state["optimizer_states"][0]["state"].values() for t in s.values() if torch.is_tensor(t)),
        ]
        assert all(torch.isfinite(t).all() for t in tensors), path.name
        assert verify(path).status == "ok", path.name
    return saved


def named_last_good(error) -> str:
    return re.search(r"Last good checkpoint: (\S+?)\.(?: |$)", str(error)).group(1)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, "nan", max_steps=8, every_n=2)
    config["trainer"]["callbacks"].append({"class_path": "plugins.PoisonWeights", "init_args": {"at_step": 5}})
    with pytest.raises(FloatingPointError, match="training loss is nan at global step 5") as info:
        fit(tmp_path, config)
    assert "last.ckpt" in str(info.value)
    last = torch.load(tmp_path / "logs" / "nan" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_diverging_lr_never_reaches_a_checkpoint(tmp_path):
    """lr 1e6: the first steps' losses are finite, then the update blows up. Before, last.ckpt and step000002.ckpt
    were saved with NaN weights and named 'last good'. The finite blow-up check is off here, so the NaN check is
    what stops the run (tests/test_divergence.py runs the same case with it on)."""
    config = tiny_config(tmp_path, "diverge", max_steps=6, every_n=1)
    stop = r"at global step [1-5]( \(.*\))?: stopping before the optimizer step"
    off = ["--model.divergence_factor", "null"]
    with pytest.raises(NonFiniteError, match=stop) as info:
        fit(tmp_path, config, extra=["--model.optimizer.init_args.lr", "1e6", *off])
    saved = all_checkpoints_are_finite_and_verify(tmp_path / "logs" / "diverge" / "checkpoints")
    assert saved and named_last_good(info.value) in [str(p) for p in saved]


def test_weights_gone_non_finite_after_a_finite_step_are_never_saved(tmp_path):
    """The step check cannot see an update that overflows; the check inside every save refuses the file."""
    config = tiny_config(tmp_path, "poisoned", max_steps=8, every_n=2)
    config["trainer"]["callbacks"].append(
        {"class_path": "plugins.PoisonWeights", "init_args": {"at_step": 4, "after_step": True}}
    )
    with pytest.raises(
        NonFiniteError, match=r"refusing to save a checkpoint at global step 4: .*output.weight"
    ) as info:
        fit(tmp_path, config)
    folder = tmp_path / "logs" / "poisoned" / "checkpoints"
    assert [p.name for p in all_checkpoints_are_finite_and_verify(folder)] == ["last.ckpt", "step000002.ckpt"]
    assert named_last_good(info.value) == str(folder / "last.ckpt")
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2


def test_deterministic_runs_repeat_bitwise(tmp_path):
    losses = []
    for run in ("a", "b"):
        config = tiny_config(tmp_path / run, "det", max_steps=5)
        config["trainer"]["deterministic"] = True
        fit(tmp_path / run, config)
        losses.append(logged_scalars(tmp_path / run / "logs" / "det", "train/loss"))
    assert len(losses[0]) == 5 and losses[0] == losses[1]


# ---- kills, SIGTERM, full disks, damage: resume with --ckpt_path last continues exactly --------------------------


def start_training(tmp_path, config, tag):
    """A real train.py process; its stderr goes to ``tmp_path/<tag>.stderr``."""
    cmd, env = cli_subprocess_args(tmp_path, config, tag)
    with open(tmp_path / f"{tag}.stderr", "wb") as stderr:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(path, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"training exited ({process.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("straight")
    fit(tmp_path, tiny_config(tmp_path, "straight", max_steps=12, every_n=4))
    return logged_scalars(tmp_path / "logs" / "straight", "train/loss")


def resume_last(tmp_path, name, expect_from=None):
    """Losses logged in ``name``'s run dir after ``--ckpt_path last`` trained it to step 12."""
    config = tiny_config(tmp_path, name, max_steps=12, every_n=4)
    cli = fit(tmp_path, config, ckpt_path="last", tag="resume")
    # It resumed rather than started over (which would repeat the same losses from step 0).
    assert cli.trainer.ckpt_path is not None
    if expect_from is not None:
        assert cli.trainer.ckpt_path == str(expect_from)
    return logged_scalars(tmp_path / "logs" / name, "train/loss")


@pytest.mark.slow
def test_sigkill_during_training_resumes_exactly(tmp_path, uninterrupted):
    config = tiny_config(tmp_path, "killed", max_steps=12, every_n=4)
    config["trainer"]["callbacks"].append({"class_path": "plugins.SlowSteps", "init_args": {"seconds": 0.5}})
    process = start_training(tmp_path, config, "killed")
    wait_for(tmp_path / "logs" / "killed" / "checkpoints" / "step000008.ckpt", process)
    time.sleep(0.7)  # into step 9 or 10
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert resume_last(tmp_path, "killed") == uninterrupted


@pytest.mark.slow
def test_sigkill_while_writing_checkpoint_never_leaves_a_truncated_one(tmp_path, uninterrupted):
    marker = tmp_path / "writing"
    config = tiny_config(tmp_path, "torn", max_steps=12, every_n=4)
    config["trainer"]["plugins"] = [
        {"class_path": "plugins.SlowCheckpointIO", "init_args": {"slow_from_step": 8, "marker": str(marker)}}
    ]
    process = start_training(tmp_path, config, "torn")
    wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = tmp_path / "logs" / "torn" / "checkpoints"
    assert not (folder / "step000008.ckpt").exists()  # the half-written one never took the real name
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4
    assert list(folder.glob("*.tmp-*"))  # the torn temporary file is all that is left of step 8
    assert resume_last(tmp_path, "torn") == uninterrupted
    assert not list(folder.glob("*.tmp-*"))  # cleaned up at the start of the resumed run


@pytest.mark.slow
def test_sigkill_while_writing_the_first_last_ckpt_resumes_from_the_periodic_one(tmp_path, uninterrupted):
    """Before, no last.ckpt meant `--ckpt_path last` restarted from step 0 although step000004.ckpt was valid."""
    marker = tmp_path / "writing"
    config = tiny_config(tmp_path, "first", max_steps=12, every_n=4)
    config["trainer"]["plugins"] = [
        {
            "class_path": "plugins.SlowCheckpointIO",
            "init_args": {"slow_from_step": 4, "marker": str(marker), "only_name": "last.ckpt"},
        }
    ]
    process = start_training(tmp_path, config, "first")
    wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = tmp_path / "logs" / "first" / "checkpoints"
    assert not (folder / "last.ckpt").exists() and verify(folder / "step000004.ckpt").status == "ok"
    got = resume_last(tmp_path, "first", expect_from=folder / "step000004.ckpt")
    # Steps 4-11 come from the resumed run (the killed one's last events may not have reached the disk).
    assert {k: v for k, v in got.items() if k >= 4} == {k: v for k, v in uninterrupted.items() if k >= 4}


@pytest.mark.slow
def test_sigterm_saves_the_step_reached_and_exits_143(tmp_path, uninterrupted):
    """Before, SIGTERM (preemption) ended the run with exit code 0 and saved nothing."""
    progress = tmp_path / "progress"
    config = tiny_config(tmp_path, "term", max_steps=12, every_n=4)
    config["trainer"]["callbacks"].append(
        {"class_path": "plugins.SlowSteps", "init_args": {"seconds": 0.5, "progress": str(progress)}}
    )
    process = start_training(tmp_path, config, "term")
    folder = tmp_path / "logs" / "term" / "checkpoints"
    wait_for(progress, process)
    while int(progress.read_text() or 0) < 5:  # past the periodic checkpoint of step 4
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143, (tmp_path / "term.stderr").read_text()[-3000:]
    reached = torch.load(folder / "last.ckpt", weights_only=True)["global_step"]
    assert 5 <= reached < 8 and verify(folder / "last.ckpt").status == "ok"  # a save of its own, not step 4's
    assert max(logged_scalars(tmp_path / "logs" / "term", "train/loss")) == reached  # the step it stopped at
    assert "stopped by SIGTERM" in (tmp_path / "term.stderr").read_text()
    assert resume_last(tmp_path, "term", expect_from=folder / "last.ckpt") == uninterrupted


@pytest.mark.slow
@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_the_process_group_with_data_workers_saves_the_step_reached(tmp_path, uninterrupted, name, code):
    """What SLURM's preemption, ``timeout`` and a terminal's Ctrl-C send: the signal to every process of the group,
    data loader workers included. Before, a SIGTERM killed the workers (torch's handler in them) and training died
    of "DataLoader worker ... is killed by signal: Terminated": exit 1, the step reached not saved; a Ctrl-C printed
    its message once per worker."""
    config = tiny_config(tmp_path, "group", max_steps=12, every_n=4)
    config["data"]["num_workers"] = 2
    config["trainer"]["callbacks"].append(
        {"class_path": "plugins.SignalAfterBatch", "init_args": {"at": 6, "signal": name, "outside": True}}
    )
    cmd, env = cli_subprocess_args(tmp_path, config, "group")
    # Its own process group: the signal reaches the run and its workers, not pytest.
    done = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, start_new_session=True
    )
    assert done.returncode == code, done.stderr[-3000:]
    assert "DataLoader worker" not in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("stopping after this step and saving it") == 1
    last = tmp_path / "logs" / "group" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6 and verify(last).status == "ok"
    assert resume_last(tmp_path, "group", expect_from=last) == uninterrupted


@pytest.mark.slow
def test_full_disk_leaves_no_orphan_in_the_way_of_the_resume(tmp_path, uninterrupted):
    config = tiny_config(tmp_path, "full", max_steps=12, every_n=4)
    config["trainer"]["plugins"] = [{"class_path": "plugins.FullDiskCheckpointIO", "init_args": {"from_step": 8}}]
    with pytest.raises(OSError, match="No space left on device"):
        fit(tmp_path, config)
    folder = tmp_path / "logs" / "full" / "checkpoints"
    assert [p.name for p in folder.glob("*.tmp-*")] == []  # the failed save removes its partial file itself
    resume = tiny_config(tmp_path, "full", max_steps=12, every_n=4)
    resume["trainer"]["callbacks"].append(
        {"class_path": "plugins.RequireNoOrphans", "init_args": {"folder": str(folder)}}
    )
    cli = fit(tmp_path, resume, ckpt_path="last", tag="resume")
    assert cli.trainer.ckpt_path == str(folder / "last.ckpt")  # step 4's, the newest that was written
    assert logged_scalars(tmp_path / "logs" / "full", "train/loss") == uninterrupted


@pytest.mark.slow
def test_final_steps_are_saved_when_max_steps_is_not_a_multiple_of_the_interval(tmp_path, uninterrupted):
    """Before, max_steps 6 with checkpoints every 4 left last.ckpt at step 4: a resume repeated two steps."""
    fit(tmp_path, tiny_config(tmp_path, "tail", max_steps=6, every_n=4))
    last = tmp_path / "logs" / "tail" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6 and verify(last).status == "ok"
    assert resume_last(tmp_path, "tail", expect_from=last) == uninterrupted


@pytest.mark.slow
def test_bit_flipped_checkpoints_fall_back_to_the_newest_that_verifies(tmp_path, uninterrupted, caplog):
    """Before, a bit-flipped last.ckpt loaded and trained to NaN."""
    fit(tmp_path, tiny_config(tmp_path, "flip", max_steps=8, every_n=4))
    folder = tmp_path / "logs" / "flip" / "checkpoints"
    flip_bit(folder / "last.ckpt")
    flip_bit(folder / "step000008.ckpt")
    assert resume_last(tmp_path, "flip", expect_from=folder / "step000004.ckpt") == uninterrupted
    assert "last.ckpt: its sha256 is" in caplog.text and "step000008.ckpt: its sha256 is" in caplog.text
    assert f"Resuming from {folder / 'step000004.ckpt'}, the newest checkpoint that verifies" in caplog.text
