"""``--ckpt_path http://...`` loads with weights_only=True (Lightning's default for URLs is False), with its
checksum checked when one is served beside it: a checkpoint from a URL is data, never code."""

import functools
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
