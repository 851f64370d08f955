"""What the README and the Makefile promise about the demo: `make demo` runs both stages (the README said so while
it ran stage 1 only), the README's stage-2 command still works after it, its Python runs as printed (no literal
`<start time>`), and stated times carry the date and machine they were measured on."""

import re
import subprocess

import pytest
from training_helpers import REPO, fit, logged_scalars, only_run_dir, tiny_config

README = (REPO / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_make_demo_runs_stage_1_then_the_recovery(tmp_path):
    plan = subprocess.run(
        ["make", "-n", "demo", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert plan.returncode == 0, plan.stderr
    runs = [line.split("train.py", 1)[1].strip() for line in plan.stdout.splitlines() if "src/train.py" in line]
    assert runs == ["fit --config configs/demo.yaml", "fit --config configs/demo_recover.yaml --ckpt_path last"]


def test_readme_python_runs_as_printed():
    for block in code_blocks("python"):
        assert "<start time>" not in block, block  # the LitLM snippet loaded a literal "<start time>" folder
        compile(block, "README.md", "exec")


def test_stated_times_say_when_and_on_what_they_were_measured():
    assert "(the Quick start runs both)" not in README
    timing = README[README.index("How long it takes") :][:900]
    assert "2-core CPU" in timing and re.search(r"2026-\d\d-\d\d", timing) and "load" in timing
    makefile = (REPO / "Makefile").read_text()
    note = makefile[: makefile.index("test-fast: setup")].rsplit("\n\n", 1)[-1]
    assert re.search(r"Measured 2026-\d\d-\d\d on a 2-core CPU", note) and re.search(r"test-fast \d+m\d\d", note)


@pytest.mark.slow
def test_the_readme_stage_2_command_after_make_demo_trains_nothing_more(tmp_path):
    """After `make demo` (both stages done), the README's stage-2 command resumes at the last step: it ends without
    an error and adds no steps, new folders or checkpoint versions."""
    fit(tmp_path, tiny_config(tmp_path, "demo", "demo.yaml", max_steps=4, version=None), tag="stage1")
    recover = tiny_config(tmp_path, "demo", "demo_recover.yaml", max_steps=6, attention="sdpa", version=None)
    recover["stage"]["switch_step"] = 0
    recover["stage"]["min_start_step"] = 4  # the tiny stage 1's length (150 as shipped)
    fit(tmp_path, recover, ckpt_path="last", tag="stage2")
    run = only_run_dir(tmp_path / "logs" / "demo")
    before = logged_scalars(run, "train/loss")
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    cli = fit(tmp_path, recover, ckpt_path="last", tag="again")
    assert cli.trainer.global_step == 6 and logged_scalars(run, "train/loss") == before
    assert only_run_dir(tmp_path / "logs" / "demo") == run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == files
