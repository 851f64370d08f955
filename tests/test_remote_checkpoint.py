"""``--ckpt_path http://...`` loads with weights_only=True (Lightning's default for URLs is False), with its
checksum checked when one is served beside it: a checkpoint from a URL is data, never code."""

import functools
import hashlib
import http.server
import threading

import pytest
import torch
from test_checkpoint_files import RunsCode, checkpoint, flip_bit
from training_helpers import fit, logged_scalars, tiny_config

from lighthouse.checkpoint.io import AtomicCheckpointIO, CheckpointError


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_url_checkpoint_that_would_run_code_is_refused(served, tmp_path):
    folder, url = served
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, folder / "evil.ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        AtomicCheckpointIO().load_checkpoint(f"{url}/evil.ckpt")
    assert not marker.exists()


def test_cli_resume_from_url_never_runs_code(served, tmp_path):
    folder, url = served
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, folder / "evil.ckpt")
    config = tiny_config(tmp_path, "url", max_steps=2)
    with pytest.raises(CheckpointError, match=r"evil.ckpt: unpickling it would import"):
        fit(tmp_path, config, ckpt_path=f"{url}/evil.ckpt")
    assert not marker.exists()
    assert not logged_scalars(tmp_path / "logs" / "url", "train/loss")  # refused before the first step


def test_url_checkpoint_is_verified_against_its_served_checksum(served):
    folder, url = served
    io = AtomicCheckpointIO()
    io.save_checkpoint(checkpoint(5), folder / "good.ckpt")
    loaded = io.load_checkpoint(f"{url}/good.ckpt")
    assert loaded["global_step"] == 5 and torch.equal(loaded["state_dict"]["w"], torch.ones(64, 64))
    io.save_checkpoint(checkpoint(6), folder / "flipped.ckpt")
    flip_bit(folder / "flipped.ckpt")
    with pytest.raises(CheckpointError, match="flipped.ckpt is damaged"):
        io.load_checkpoint(f"{url}/flipped.ckpt")
    with pytest.raises(CheckpointError, match="cannot fetch checkpoint .*missing.ckpt"):
        io.load_checkpoint(f"{url}/missing.ckpt")


# ---- saving to a URL: fsspec, atomic where the filesystem allows, checksummed; never a mangled local path ---------


@pytest.fixture
def memory_fs():
    """fsspec's in-memory filesystem, emptied after the test (it is one store per process)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/ckpt-test"):
        fs.rm("/ckpt-test", recursive=True)


def test_url_save_goes_through_fsspec_with_its_checksum(memory_fs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the old code wrote ./memory:/ckpt-test/... here
    io = AtomicCheckpointIO()
    url = "memory://ckpt-test/run/last.ckpt"
    io.save_checkpoint(checkpoint(7), url)
    assert not any(tmp_path.iterdir()), "a URL must never become a local folder"
    assert sorted(memory_fs.ls("/ckpt-test/run", detail=False)) == [
        "/ckpt-test/run/last.ckpt",
        "/ckpt-test/run/last.ckpt.sha256",
    ]  # no temporary object left behind
    data = memory_fs.cat("/ckpt-test/run/last.ckpt")
    digest = hashlib.sha256(data).hexdigest()
    assert memory_fs.cat("/ckpt-test/run/last.ckpt.sha256").decode() == f"{digest}  last.ckpt\n"
    loaded = io.load_checkpoint(url)
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], torch.ones(64, 64))
    # A second save replaces both files; a flipped byte is then caught by the checksum as for local files.
    io.save_checkpoint(checkpoint(8), url)
    assert io.load_checkpoint(url)["global_step"] == 8
    damaged = bytearray(memory_fs.cat("/ckpt-test/run/last.ckpt"))
    damaged[len(damaged) // 2] ^= 0x04
    memory_fs.pipe("/ckpt-test/run/last.ckpt", bytes(damaged))
    with pytest.raises(CheckpointError, match="last.ckpt is damaged"):
        io.load_checkpoint(url)
    io.remove_checkpoint(url)
    assert memory_fs.ls("/ckpt-test/run", detail=False) == []  # the checksum goes with its checkpoint


def test_url_save_with_a_missing_filesystem_package_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot use checkpoint location nosuchproto://bucket/last.ckpt"):
        AtomicCheckpointIO().save_checkpoint(checkpoint(1), "nosuchproto://bucket/last.ckpt")
    assert not any(tmp_path.iterdir())


def test_url_save_that_fails_midway_leaves_no_temporary_object(memory_fs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Failing(AtomicCheckpointIO):
        def write(self, checkpoint, f) -> None:
            f.write(b"partial")
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="cannot save checkpoint memory://ckpt-test/full/last.ckpt"):
        Failing().save_checkpoint(checkpoint(1), "memory://ckpt-test/full/last.ckpt")
    assert memory_fs.ls("/ckpt-test/full", detail=False) == []
