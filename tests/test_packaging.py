"""One source of truth for dependencies: pyproject.toml pins torch once; the Makefile, environment.yml and the
console script follow it."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from training_helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def torch_pin() -> str:
    pin = PYPROJECT["tool"]["lighthouse"]["torch"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pin), f"the tested torch must be one version, got {pin!r}"
    return pin


def test_torch_dependency_is_a_range_that_admits_the_tested_version():
    """Installing the project must not replace a CUDA torch an environment already has."""
    (torch,) = [d for d in PROJECT["dependencies"] if re.match(r"torch\b", d)]
    match = re.fullmatch(r"torch>=(\d+)\.(\d+)", torch)
    assert match, f"torch should be a lower bound, got {torch!r}"
    assert tuple(int(x) for x in torch_pin().split(".")[:2]) >= tuple(int(x) for x in match.groups())


def test_pyproject_declares_the_extras_and_the_console_script():
    assert set(PROJECT["optional-dependencies"]) >= {"dev", "kernels", "data", "report", "hf"}
    assert any(d.startswith("safetensors") for d in PROJECT["dependencies"])
    assert PROJECT["scripts"] == {"lighthouse": "lighthouse.train.cli:entry_point"}
    assert PROJECT["license"] == "Apache-2.0"  # an SPDX string, not the deprecated table


def test_makefile_installs_the_pinned_torch_and_reinstalls_when_it_changes(tmp_path):
    plan = subprocess.run(
        ["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert plan.returncode == 0, plan.stderr
    assert f'"torch=={torch_pin()}"' in plan.stdout
    assert f".torch-{torch_pin()}-" in plan.stdout  # the stamp .installed depends on carries the version
    assert torch_pin() not in (REPO / "Makefile").read_text()  # read from pyproject.toml, not repeated


@pytest.mark.parametrize(
    ("nvidia_smi", "said"),
    [
        ('echo "GPU 0: NVIDIA H200 (UUID: GPU-x)"', "cuda build: nvidia-smi lists a GPU"),
        ("exit 9", "cpu build: nvidia-smi is here but lists no GPU (a driver problem?)"),
    ],
)
def test_makefile_says_which_torch_build_and_replaces_a_cpu_build_on_a_gpu_box(tmp_path, nvidia_smi, said):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    plan = subprocess.run(
        ["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=REPO, env=env, capture_output=True, text=True
    ).stdout
    assert f'echo "torch {torch_pin()}, {said}"' in plan
    # The uninstall of a +cpu torch runs only for the CUDA build, before the pinned install.
    guard = next(line for line in plan.splitlines() if "torch.version.cuda is not None" in line)
    assert guard.startswith(f'if [ "{"cuda" if "cuda build" in said else "cpu"}" = cuda ]')
    assert plan.index("pip uninstall -y -q torch") < plan.index(f'"torch=={torch_pin()}"')


def test_environment_yml_installs_the_project_after_the_pinned_torch():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    (pip,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert f"pytorch={torch_pin()}" in conda
    assert pip == ["-e .[dev,kernels]"]  # no hand-kept copy of the dependency list


@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_console_script_shows_field_documentation():
    """What `lighthouse fit --help` prints: the dataclass field docs and the stage switch's own group."""
    code = (
        "import sys; from lighthouse.train.cli import entry_point; "
        "sys.argv = ['lighthouse', *sys.argv[1:]]; entry_point()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "fit", "--config", "configs/demo.yaml", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    help_text = " ".join(result.stdout.split())
    assert "--model.arch.dim DIM Model (residual stream) width" in help_text
    assert "--model.arch.flavor FLAVOR Named model size" in help_text
    assert "--stage.switch_step SWITCH_STEP Shorthand for two phases" in help_text
    assert "--throughput.window WINDOW Timed steps averaged per logged value" in help_text
