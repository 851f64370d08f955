"""Bad configs fail before training; crashes, kills and NaNs lose nothing; deterministic runs repeat bitwise."""

import signal
import subprocess
import time

import pytest
from training_helpers import cli_subprocess_args, fit, logged_scalars, tiny_config

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
    "stage2-backend": (["--trainer.callbacks+=lighthouse.callbacks.StageSwitch", "--trainer.callbacks.stage2_backend",
                        "flash"], "stage2_backend='flash' is not one of"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_setting_fails_before_first_step(tmp_path, name):
    if name == "devices":
        import torch

        if torch.cuda.device_count() >= 2:
            pytest.skip("this machine has two GPUs")
    args, message = BAD_SETTINGS[name]
    config = tiny_config(tmp_path, "bad", max_steps=2)
    with pytest.raises(Exception, match=message):
        fit(tmp_path, config, extra=args)
    assert not logged_scalars(tmp_path / "logs" / "bad", "train/loss")
    assert not (tmp_path / "logs" / "bad" / "checkpoints").exists()


def test_context_length_is_configured_once(tmp_path, capsys):
    config = tiny_config(tmp_path, "twice", max_steps=2)
    with pytest.raises(SystemExit):
        fit(tmp_path, config, extra=["--model.arch.max_seq_len", "1024"])
    assert 'Linked "model.arch.max_seq_len" must be given via "data.seq_len"' in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path, "nan", max_steps=8, every_n=2)
    config["trainer"]["callbacks"].append({"class_path": "plugins.PoisonWeights", "init_args": {"at_step": 5}})
    with pytest.raises(FloatingPointError, match="training loss is nan at global step 5") as info:
        fit(tmp_path, config)
    assert "last.ckpt" in str(info.value)
    import torch

    last = torch.load(tmp_path / "logs" / "nan" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_deterministic_runs_repeat_bitwise(tmp_path):
    losses = []
    for run in ("a", "b"):
        config = tiny_config(tmp_path / run, "det", max_steps=5)
        config["trainer"]["deterministic"] = True
        fit(tmp_path / run, config)
        losses.append(logged_scalars(tmp_path / run / "logs" / "det", "train/loss"))
    assert len(losses[0]) == 5 and losses[0] == losses[1]


# ---- kills: real processes, SIGKILL, resume with --ckpt_path last ----------------------------------------------


def start_training(tmp_path, config, tag):
    cmd, env = cli_subprocess_args(tmp_path, config, tag)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def resume_last(tmp_path, name):
    config = tiny_config(tmp_path, name, max_steps=12, every_n=4)
    fit(tmp_path, config, ckpt_path="last", tag="resume")
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
    import torch

    marker = tmp_path / "writing"
    config = tiny_config(tmp_path, "torn", max_steps=12, every_n=4)
    config["trainer"]["plugins"] = [{"class_path": "plugins.SlowCheckpointIO",
                                     "init_args": {"slow_from_step": 8, "marker": str(marker)}}]
    process = start_training(tmp_path, config, "torn")
    wait_for(marker, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    folder = tmp_path / "logs" / "torn" / "checkpoints"
    assert not (folder / "step000008.ckpt").exists()  # the half-written one never took the real name
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 4
    assert list(folder.glob("*.tmp-*"))  # the torn temporary file is all that is left of step 8
    assert resume_last(tmp_path, "torn") == uninterrupted
    assert not list(folder.glob("*.tmp-*"))  # cleaned up by the next save
