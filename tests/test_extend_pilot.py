"""bench/extend_pilot.sh end to end on the CPU with the debug flavour: pre-train, export, import, validate the
un-extended model, extend with Lighthouse + recovery and densely. Pins that each extension run is validated at its
end (with an interval of N alone, the runs of N + M steps were measured at the switch only, and the report's "end"
column repeated the switch's numbers)."""

import os
import subprocess
import sys

import pytest
from training_helpers import REPO

from lighthouse.eval.run_logs import find_runs, read_run

N, M = 4, 2
COMMON = "--model.compile false --trainer.precision 32 --data.num_workers 0"
PRE_EXTRA = f"--model.arch.flavor debug --data.seq_len 256 --data.batch_size 2 {COMMON}"
EXTEND_EXTRA = (
    "--model.arch.dense_layers [0,3] --model.arch.lighthouse.topk 128 --data.seq_len 2048 "
    f"--model.arch.activation_checkpointing false {COMMON}"
)


def pilot(part: str, tmp_path, attention: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PILOT": str(tmp_path / "pilot"),
        "PRE_STEPS": "6",
        "N": str(N),
        "M": str(M),
        "PRE_EXTRA": PRE_EXTRA,
        # The extension config names the Triton path; the CPU runs the same attention in plain PyTorch.
        "EXTEND_EXTRA": f"--model.arch.attention {attention} {EXTEND_EXTRA}",
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "bench/extend_pilot.sh", part], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def validated_steps(tmp_path, name: str) -> list[int]:
    (run_dir,) = find_runs(tmp_path / "pilot" / "logs" / name)
    run = read_run(run_dir)
    return run.series("val/loss_dense").steps or run.series("val/loss").steps


@pytest.mark.slow
def test_the_extension_pilot_runs_every_part_and_measures_each_run_at_its_end(tmp_path):
    for part, attention, run in (
        ("pretrain", "sdpa", "pretrain_4k"),
        ("before", "sdpa", "before"),
        ("lighthouse", "lighthouse_naive", "lighthouse"),
    ):
        done = pilot(part, tmp_path, attention)
        assert f"{run} rc=0" in done.stdout, (tmp_path / "out" / f"extend_{part}.log").read_text()
    report = pilot("dense", tmp_path, "sdpa").stdout
    assert "dense rc=0" in report
    header = report.splitlines()[1]
    columns = ["positions", "imported, un-extended", f"Lighthouse, step {N}", "Lighthouse + recovery, end"]
    assert header == "| " + " | ".join([*columns, "dense extension, end"]) + " |"
    assert validated_steps(tmp_path, "lighthouse")[-2:] == [N, N + M]
    assert validated_steps(tmp_path, "dense")[-1] == N + M
    rows = [line.split(" | ") for line in report.splitlines()[3:] if line.startswith("| 1k-2k")]
    assert rows and "-" not in rows[0][2:], report  # the extended runs have losses beyond the pre-trained 256
