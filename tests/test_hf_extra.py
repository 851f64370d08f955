"""An 'hf:' corpus without the ``datasets`` package: one message naming the extra to install, exit 2, no files."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
from training_helpers import cli_subprocess_args, tiny_config

from lighthouse.data.settings import DataSettings

NEEDS = 'pip install -e ".[data]"'


def test_settings_name_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a))
    with pytest.raises(ValueError, match="corpus='hf:wikitext'") as err:
        DataSettings(corpus="hf:wikitext")
    assert NEEDS in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed here")
@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_fit_exits_2_and_writes_no_file(tmp_path):
    config = tiny_config(tmp_path, "hf")
    config["data"]["corpus"] = "hf:wikitext"
    work = tmp_path / "work"
    work.mkdir()
    cmd, env = cli_subprocess_args(tmp_path, config, "hf")
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and NEEDS in done.stderr
    # The version folder is removed again; only empty folders (logs/, logs/hf/) may stay behind.
    written = [p for root in (work, tmp_path / "logs", tmp_path / "data") for p in root.rglob("*") if p.is_file()]
    assert written == [], written
