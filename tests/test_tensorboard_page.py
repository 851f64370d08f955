"""What a finished run shows in TensorBoard: exactly the train/, val/ and perf/ groups (read from the event files
and from a real TensorBoard server's HTTP API), the stage switch marked, and resumed curves on the step axis of
an uninterrupted run."""

import json
import math
import re
import select
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from training_helpers import fit, only_run_dir, tiny_config, two_stage_run

from lighthouse.eval.run_logs import read_run
from lighthouse.train.device_peak import peak_flops_per_device

TRAIN = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_seen", "train/stage"}
VAL = {
    "val/loss",
    "val/ppl",
    "val/loss_pos/0-256",
    "val/loss_pos/256-512",  # seq_len 512
    "val/loss_dense",
    "val/loss_dense_pos/0-256",
    "val/loss_dense_pos/256-512",
}
PERF = {
    "perf/tokens_per_sec",
    "perf/tokens_per_sec_per_device",
    "perf/tflops_per_device",
    "perf/step_time_s",
    "perf/data_wait_share",
}


def expected_tags() -> set[str]:
    perf = set(PERF)
    if torch.cuda.is_available():  # the recorder reports device memory, and MFU where the GPU's peak is known
        perf.add("perf/max_memory_gib")
        if peak_flops_per_device(dtype=torch.float32) is not None:  # the tiny runs train in 32-true
            perf |= {"perf/mfu", "perf/mfu_actual"}
    return TRAIN | VAL | perf


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return two_stage_run(tmp_path_factory.getbasetemp() / "shared_two_stage")


def test_event_files_hold_the_three_groups_and_nothing_else(run):
    tags = set(read_run(run).scalars)
    assert tags == expected_tags()
    assert {tag.split("/", 1)[0] for tag in tags} == {"train", "val", "perf"}


def test_stage_switch_is_a_step_and_a_note(run):
    logged = read_run(run)
    assert logged.series("train/stage").as_dict() == {s: (1.0 if s <= 6 else 2.0) for s in range(1, 13)}
    ((step, note),) = logged.notes["train/stage"]
    assert step == 6 and "Phase 2 of 2 (dense) from step 6" in note
    assert "Attention of layers 1-2: lighthouse_naive -> sdpa" in note


def test_grad_norm_and_tokens_seen_every_step(run):
    logged = read_run(run)
    norms = logged.series("train/grad_norm")
    assert norms.steps == list(range(1, 13)) and all(math.isfinite(v) and v > 0 for v in norms.values)
    tokens = logged.series("train/tokens_seen").as_dict()
    assert tokens == {s: float(s * 2 * 512) for s in range(1, 13)}  # batch 2 x 512 predicted tokens per step


@pytest.mark.slow
def test_resumed_curves_share_the_uninterrupted_step_axis(tmp_path, run):
    """Stopped at step 8 and resumed: the second launch logs steps 9.. and every curve (but the timing ones,
    whose windows restart) equals the uninterrupted run's, step for step."""
    first = tiny_config(tmp_path, "two_stage", max_steps=8, switch_step=6, every_n=4, version=None)
    fit(tmp_path, first, tag="first")
    more = tiny_config(tmp_path, "two_stage", max_steps=12, switch_step=6, every_n=4, version=None)
    fit(tmp_path, more, ckpt_path="last", tag="more")
    resumed, straight = read_run(only_run_dir(tmp_path / "logs" / "two_stage")), read_run(run)
    loss = resumed.series("train/loss")
    assert [s for s, launch in zip(loss.steps, loss.launches, strict=True) if launch == 1] == list(range(9, 13))
    for tag in sorted(expected_tags() - PERF):
        assert resumed.series(tag).as_dict() == straight.series(tag).as_dict(), tag


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_server_serves_the_groups(run):
    """A real TensorBoard on 127.0.0.1 (any free port), asked through its HTTP API what a browser would show."""
    logdir = run.parent.parent  # --logdir logs, as the README says
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--load_fast",
            "false",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert time.monotonic() < deadline and server.poll() is None, "TensorBoard did not start"
            if select.select([server.stdout], [], [], 1.0)[0]:  # never block past the deadline
                match = re.search(r"(http://127\.0\.0\.1:\d+)/", server.stdout.readline())
                url = match.group(1) if match else None
        name = f"{run.parent.name}/{run.name}"
        while True:  # the first load of the event files runs in the background
            scalars = _get_json(f"{url}/data/plugin/scalars/tags")
            if set(scalars.get(name, {})) == expected_tags() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert list(scalars) == [name]
        assert set(scalars[name]) == expected_tags()
        assert {tag.split("/", 1)[0] for tag in scalars[name]} == {"train", "val", "perf"}
        text = _get_json(f"{url}/data/plugin/text/tags")
        assert list(text) == [name] and sorted(text[name]) == ["steps/text_summary", "train/stage/text_summary"]
        assert _get_json(f"{url}/data/plugins_listing")["scalars"]["enabled"]
    finally:
        server.kill()
        server.wait(timeout=30)
