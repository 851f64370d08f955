"""The `python` corpus: the standard library plus the interpreter's site folders, with packages and versions."""

from __future__ import annotations

import importlib.metadata

import pytest
from datagen import build

from lighthouse.data import corpus as corpus_mod
from lighthouse.data import installed
from lighthouse.data.corpus import resolve_corpus
from lighthouse.data.settings import DataSettings


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _dist_info(site, name, version, files):
    info = site / f"{name}-{version}.dist-info"
    _write(info / "METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    _write(info / "RECORD", "".join(f"{f},,\n" for f in [*files, f"{info.name}/METADATA"]))


@pytest.fixture
def fake_python(tmp_path, monkeypatch):
    """A small stdlib and two site folders (one named like the stdlib's own, excluded, subfolder)."""
    stdlib = tmp_path / "lib" / "python3.x"
    for i in range(12):
        _write(stdlib / f"mod{i:02d}.py", f"def f{i}(x):\n    return x * {i}\n" * (5 + i))
    _write(stdlib / "json" / "__init__.py", "import re\n" * 20)
    _write(stdlib / "__pycache__" / "mod00.py", "not read\n")
    _write(stdlib / "site-packages" / "inside.py", "read through the site walk only\n")
    site = stdlib / "site-packages"
    for i in range(6):
        _write(site / "fakepkg" / f"part{i}.py", f"VALUE_{i} = {i}\n" * (10 + i))
    _write(site / "fakepkg" / "__pycache__" / "part0.py", "not read\n")
    _write(site / "fakepkg" / "data.bin", "not .py\n")
    _write(site / "six.py", "PY3 = True\n" * 30)
    _write(site / "loose.py", "# no distribution owns this\n" * 10)
    _dist_info(site, "fakepkg", "1.2.3", [f"fakepkg/part{i}.py" for i in range(6)])
    _dist_info(site, "six", "1.16.0", ["six.py"])
    _dist_info(site, "binary-only", "0.1", ["binary_only/lib.so"])
    user = tmp_path / "user" / "site-packages"
    _write(user / "userpkg" / "__init__.py", "USER = 1\n" * 40)
    _dist_info(user, "userpkg", "2.0", ["userpkg/__init__.py"])
    monkeypatch.setattr(corpus_mod, "stdlib_root", lambda: stdlib)
    monkeypatch.setattr(installed, "site_folders", lambda: [site, user])
    return stdlib, site, user


def test_python_corpus_reads_stdlib_and_every_site_folder_and_records_versions(fake_python, tmp_path):
    stdlib, site, user = fake_python
    spec = resolve_corpus("python")
    rels = [f.rel for f in spec.files]
    assert rels == sorted(rels)
    assert "mod00.py" in rels and "json/__init__.py" in rels  # stdlib keys as in the stdlib corpus
    assert "site-packages/fakepkg/part0.py" in rels and "site-packages/six.py" in rels
    assert "site-packages~2/userpkg/__init__.py" in rels  # a second folder of the same name
    assert not any("__pycache__" in r or r.endswith(".bin") for r in rels)
    assert rels.count("site-packages/inside.py") == 1  # read once, through the site walk
    assert len(rels) == 13 + 1 + 6 + 2 + 1

    first = build("python", tmp_path / "a", val_fraction=0.3).manifest
    again = build("python", tmp_path / "b", val_fraction=0.3).manifest
    assert first["data_fingerprint"] == again["data_fingerprint"]
    assert first["files"] == again["files"] and first["splits"]["val"]["documents"] >= 1
    assert first["corpus"]["sites"] == again["corpus"]["sites"]
    assert first["corpus"]["kind"] == "python" and first["corpus"]["python"]
    sites = {s["label"]: s for s in first["corpus"]["sites"]}
    assert sites["site-packages"]["path"] == str(site) and sites["site-packages~2"]["path"] == str(user)
    packages = {p["name"]: p for p in sites["site-packages"]["packages"]}
    assert packages["fakepkg"]["distributions"] == ["fakepkg==1.2.3"] and packages["fakepkg"]["files"] == 6
    assert packages["six"]["distributions"] == ["six==1.16.0"]
    assert packages["loose"]["distributions"] == [] and packages["inside"]["files"] == 1
    assert packages["fakepkg"]["bytes"] == sum((site / "fakepkg" / f"part{i}.py").stat().st_size for i in range(6))
    # every installed distribution is named, even one that brought no .py file
    assert sites["site-packages"]["distributions"] == [
        {"name": "binary-only", "version": "0.1"},
        {"name": "fakepkg", "version": "1.2.3"},
        {"name": "six", "version": "1.16.0"},
    ]
    assert sites["site-packages~2"]["packages"][0]["distributions"] == ["userpkg==2.0"]


def test_python_corpus_changes_its_cache_key_when_a_package_changes(fake_python, tmp_path):
    _, site, _ = fake_python
    before = build("python", tmp_path / "a", val_fraction=0.3)
    (site / "fakepkg" / "part0.py").write_text("VALUE_0 = 'changed'\n", encoding="utf-8")
    after = build("python", tmp_path / "a", val_fraction=0.3)
    assert after.folder != before.folder and after.manifest["data_fingerprint"] != before.manifest["data_fingerprint"]


def test_python_corpus_of_this_interpreter_lists_the_stdlib_and_the_installed_packages():
    """The real listing (not tokenized: the venv holds hundreds of MB of sources)."""
    spec = resolve_corpus("python")
    rels = {f.rel for f in spec.files}
    assert "os.py" in rels and "json/__init__.py" in rels
    assert spec.sites, "no site folder found"
    torch_entries = [p for s in spec.sites for p in s["packages"] if p["name"] == "torch"]
    assert torch_entries and torch_entries[0]["distributions"] == [f"torch=={importlib.metadata.version('torch')}"]
    label = spec.sites[0]["label"]
    assert f"{label}/torch/__init__.py" in rels
    assert spec.name.startswith("python-py") and DataSettings(corpus="python").corpus == "python"
