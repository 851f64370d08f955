"""pyproject.toml's version bounds are true: the lower bounds admit nothing that lacks a feature the code calls, the
Lightning range is closed above (the code uses private Lightning internals), and the installed versions lie inside
the stated ranges. A startup check names a missing internal instead of an AttributeError mid-run."""

import importlib.metadata

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from test_packaging import PROJECT

from lighthouse.train import compat
from lighthouse.train.cli import main

REQUIREMENTS = {Requirement(d).name: Requirement(d) for d in PROJECT["dependencies"]}

# The oldest version with what the code calls: torch.compiler.set_stance (lit_module.py, transformer.py), the
# LightningCLI's --weights_only (the README's opt-out for self-written checkpoints), and jsonargparse's documented
# nested fields in --print_config and its error messages that arg_errors.py reads (found by `make test-oldest`).
NEEDED = {"torch": "2.6", "lightning": "2.6", "jsonargparse": "4.51"}


def bounds(name: str) -> tuple[Version | None, Version | None]:
    lower = upper = None
    for spec in REQUIREMENTS[name].specifier:
        if spec.operator == ">=":
            lower = Version(spec.version)
        elif spec.operator == "<":
            upper = Version(spec.version)
    return lower, upper


@pytest.mark.parametrize("name", sorted(NEEDED))
def test_lower_bound_admits_no_version_without_a_feature_the_code_calls(name):
    lower, _ = bounds(name)
    assert lower is not None and lower >= Version(NEEDED[name]), f"{REQUIREMENTS[name]}: needs >= {NEEDED[name]}"


def test_lightning_has_an_upper_bound_because_the_code_uses_its_internals():
    _, upper = bounds("lightning")
    assert upper is not None and upper <= Version("2.7"), REQUIREMENTS["lightning"]
    assert "lightning>=2.6,<2.7" in compat.TESTED_RANGE


@pytest.mark.parametrize("name", sorted(REQUIREMENTS))
def test_installed_version_lies_inside_the_stated_range(name):
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{name} is a dependency but not installed")
    assert REQUIREMENTS[name].specifier.contains(installed, prereleases=True), f"{name} {installed}"


def test_every_lightning_internal_the_code_relies_on_exists():
    assert compat.missing_internals() == []


def test_a_missing_internal_is_named_at_startup(monkeypatch, capsys):
    from lightning.pytorch.callbacks import ModelCheckpoint

    monkeypatch.delattr(ModelCheckpoint, "_save_last_checkpoint")
    with pytest.raises(compat.VersionError, match=r"ModelCheckpoint._save_last_checkpoint .*lightning>=2.6,<2.7"):
        main(["fit", "--help"])
