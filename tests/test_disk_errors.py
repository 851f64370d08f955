"""Folders that cannot be written are found before the first step (one message naming the path, exit 2, nothing
trained); a disk that fills up mid-training ends the run with one message naming the file, the earlier checkpoints
intact and no partial file left to keep the disk full.

Tests run as root, where chmod 555 does not stop a write: a read-only bind mount (or a tmpfs for a full disk) is the
real thing, skipped where mounting is not permitted; a file where a folder is expected always runs."""

import contextlib
import os
import subprocess

import pytest
import torch
import yaml
from training_helpers import cli_subprocess_args, logged_scalars, tiny_config

from lighthouse.checkpoint.files import verify
from lighthouse.checkpoint.io import AtomicCheckpointIO, CheckpointWriteError, load_verified
from lighthouse.train import exits
from lighthouse.train.cli import main
from lighthouse.train.preflight import NotWritable, check_writable


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextlib.contextmanager
def mounted(*args: str, target):
    if os.geteuid() != 0 or not _mount(*args, str(target)):
        pytest.skip("mounting is not permitted here (needs root with CAP_SYS_ADMIN); chmod does not stop root")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=False)


@contextlib.contextmanager
def read_only(folder):
    """``folder`` made read-only by a read-only bind mount of itself."""
    folder.mkdir(parents=True, exist_ok=True)
    with mounted("--bind", str(folder), target=folder):
        if not _mount("-o", "remount,bind,ro", str(folder)):
            pytest.skip("a read-only remount is not permitted here")
        yield folder


def set_checkpoint_dir(config: dict, folder) -> dict:
    for cb in config["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(folder)
    return config


def run_cli(tmp_path, config, capsys) -> tuple[int, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    code = exits.run(main, ["fit", "--config", str(path)])
    return code, capsys.readouterr().err


def test_check_writable_leaves_nothing_behind(tmp_path):
    check_writable(tmp_path / "a" / "b", "checkpoint folder")
    assert list(tmp_path.iterdir()) == []  # the folders made for the check are gone again
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotWritable, match=f"the checkpoint folder {tmp_path / 'file' / 'ckpt'} cannot be written"):
        check_writable(tmp_path / "file" / "ckpt", "checkpoint folder")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.slow
def test_checkpoint_folder_that_is_a_file_is_refused_before_the_first_step(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    blocker = tmp_path / "ckpts"
    blocker.write_text("not a folder")
    code, err = run_cli(tmp_path, set_checkpoint_dir(tiny_config(tmp_path, "file", max_steps=8), blocker), capsys)
    assert code == 2, err[-2000:]
    assert f"the checkpoint folder {blocker} cannot be written" in err and "Traceback" not in err
    assert not logged_scalars(tmp_path / "logs" / "file", "train/loss")  # not one step was trained


@pytest.mark.slow
def test_read_only_checkpoint_folder_is_refused_before_the_first_step(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    with read_only(tmp_path / "ro") as folder:
        config = set_checkpoint_dir(tiny_config(tmp_path, "ro", max_steps=8), folder)
        code, err = run_cli(tmp_path, config, capsys)
    assert code == 2, err[-2000:]
    assert f"the checkpoint folder {folder} cannot be written (Read-only file system" in err
    assert not logged_scalars(tmp_path / "logs" / "ro", "train/loss")


@pytest.mark.slow
def test_read_only_log_root_is_one_message_and_exit_2(tmp_path):
    config = tiny_config(tmp_path, "rolog", max_steps=4, version=None)  # a fresh run folder, as the shipped configs
    cmd, env = cli_subprocess_args(tmp_path, config, "rolog")
    env.pop("LIGHTHOUSE_DEBUG", None)
    with read_only(tmp_path / "logs"):
        result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"cannot create the run folder {tmp_path / 'logs' / 'rolog'}: Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr and not any((tmp_path / "logs").iterdir())


@pytest.mark.slow
def test_disk_full_mid_training_names_the_file_and_keeps_earlier_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    config = tiny_config(tmp_path, "full", max_steps=12, every_n=4)
    config["trainer"]["plugins"] = [{"class_path": "plugins.FullDiskCheckpointIO", "init_args": {"from_step": 8}}]
    code, err = run_cli(tmp_path, config, capsys)
    folder = tmp_path / "logs" / "full" / "checkpoints"
    assert code == 1, err[-2000:]
    assert "Traceback" not in err
    assert f"cannot save checkpoint {folder / 'step000008.ckpt'}: No space left on device" in err
    assert f"the newest usable one is {folder / 'last.ckpt'}" in err
    assert load_verified(folder / "step000004.ckpt")["global_step"] == 4  # the earlier checkpoints are intact
    assert load_verified(folder / "last.ckpt")["global_step"] == 4
    assert not list(folder.glob("*.tmp-*"))  # the partial file went: it would only keep the disk full


def test_real_full_disk_is_reported_with_its_cause_not_torch_s_unexpected_pos(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=disk):
        io = AtomicCheckpointIO()
        io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(64, 64)}}, disk / "a.ckpt")
        with pytest.raises(CheckpointWriteError, match=r"b.ckpt: No space left on device") as info:
            io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(256, 256)}}, disk / "b.ckpt")
        assert f"the newest usable one is {disk / 'a.ckpt'}" in str(info.value)
        assert sorted(p.name for p in disk.iterdir()) == ["a.ckpt", "a.ckpt.sha256"]
        assert verify(disk / "a.ckpt").status == "ok"
