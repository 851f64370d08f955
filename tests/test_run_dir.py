"""Run directories: one per launch, the same one on resume, one root folder, nothing written elsewhere."""

import os

import pytest
import torch
from training_helpers import fit, logged_scalars, run_dirs, tiny_config

from lighthouse.train.cli import main
from lighthouse.train.run_dir import claim_new_version, latest_version_with_checkpoint, version_of_checkpoint


@pytest.mark.slow
def test_two_launches_two_run_dirs_and_resumes_continue_their_own(tmp_path):
    group = tmp_path / "logs" / "runs"
    fit(tmp_path, tiny_config(tmp_path, "runs", max_steps=2, every_n=2, version=None), tag="a")
    fit(tmp_path, tiny_config(tmp_path, "runs", max_steps=2, every_n=2, version=None), tag="b")
    first, second = run_dirs(group)
    for run in (first, second):
        assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step000002.ckpt"]
        assert sorted(logged_scalars(run, "train/loss")) == [1, 2]

    # --ckpt_path last continues the run whose checkpoint was written last ...
    cli = fit(tmp_path, tiny_config(tmp_path, "runs", max_steps=4, every_n=2, version=None), ckpt_path="last", tag="c")
    assert cli.trainer.global_step == 4 and run_dirs(group) == [first, second]
    assert sorted(logged_scalars(second, "train/loss")) == [1, 2, 3, 4]
    # ... and an explicit checkpoint continues the run it belongs to.
    fit(
        tmp_path,
        tiny_config(tmp_path, "runs", max_steps=3, every_n=3, version=None),
        ckpt_path=str(first / "checkpoints" / "last.ckpt"),
        tag="d",
    )
    assert run_dirs(group) == [first, second]
    assert sorted(logged_scalars(first, "train/loss")) == [1, 2, 3]
    assert (first / "config.1.yaml").exists() and not (first / "config.2.yaml").exists()


def test_default_root_dir_is_the_root_of_runs(tmp_path):
    config = tiny_config(tmp_path, "unused", max_steps=1, every_n=1, version=None)
    config["trainer"]["logger"] = True  # Lightning's default logger becomes a RunLogger named "run"
    cli = fit(tmp_path, config, extra=["--trainer.default_root_dir", str(tmp_path / "elsewhere")])
    (run,) = run_dirs(tmp_path / "elsewhere" / "run")
    assert cli.trainer.log_dir == str(run) and (run / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "logs").exists()


def test_two_different_roots_are_refused(tmp_path):
    config = tiny_config(tmp_path, "twice", max_steps=1, version=None)
    with pytest.raises(ValueError, match="trainer.default_root_dir and trainer.logger.init_args.save_dir disagree"):
        fit(tmp_path, config, extra=["--trainer.default_root_dir", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists() and not (tmp_path / "logs").exists()


def test_explicit_version_holding_a_run_is_refused(tmp_path):
    config = tiny_config(tmp_path, "pinned", max_steps=1, every_n=1, version="v1")
    fit(tmp_path, config)
    with pytest.raises(ValueError, match="already holds a run; continue it with --ckpt_path last"):
        fit(tmp_path, config, tag="again")


def test_validate_without_logger_writes_only_into_its_run_dir(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = tiny_config(tmp_path, "unused", version=None)
    path = tmp_path / "validate.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    main(
        [
            "validate",
            "--config",
            str(path),
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert list(work.iterdir()) == []
    (run,) = run_dirs(tmp_path / "runs")
    assert {p.name for p in run.iterdir()} == {"config.yaml", "data_manifest.json"}


def test_versions_are_claimed_once_even_in_the_same_second(tmp_path):
    names = [claim_new_version(tmp_path, now=1_800_000_000.0) for _ in range(3)]
    assert len(set(names)) == 3 and names[1] == names[0] + "_1"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_checkpoint_locations(tmp_path):
    group = tmp_path / "logs" / "demo"
    assert version_of_checkpoint(group / "v1" / "checkpoints" / "last.ckpt", group) == "v1"
    assert version_of_checkpoint(group / "checkpoints" / "last.ckpt", group) == ""  # the flat layout
    assert version_of_checkpoint(tmp_path / "elsewhere" / "last.ckpt", group) is None
    assert version_of_checkpoint(tmp_path / "logs" / "other" / "v1" / "checkpoints" / "x.ckpt", group) is None

    assert latest_version_with_checkpoint(group) is None
    for version, mtime in (("old", 100), ("new", 300), ("middle", 200)):
        (group / version / "checkpoints").mkdir(parents=True)
        ckpt = group / version / "checkpoints" / "last.ckpt"
        torch.save({}, ckpt)
        os.utime(ckpt, (mtime, mtime))
    (group / "empty").mkdir()
    assert latest_version_with_checkpoint(group) == "new"
