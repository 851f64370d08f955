"""The run folder layout holds for every logger: with CSV, W&B (offline) and MLflow loggers as with TensorBoard,
config.yaml, data_manifest.json, throughput.jsonl and the checkpoints land in the announced run folder, nothing
lands beside it, and ``--ckpt_path last`` continues that folder. W&B and MLflow run where installed (optional;
skipped otherwise); a stand-in with W&B's constructor and layout rules always runs."""

import json
import re
from pathlib import Path

import pytest
from lightning.pytorch.loggers import Logger
from training_helpers import fit, only_run_dir, tiny_config

RUN_FILES = {"config.yaml", "data_manifest.json", "throughput.jsonl", "checkpoints"}


class WandbLike(Logger):
    """WandbLogger's constructor and folder rules, without wandb: ``name`` is a display name, the project is the
    name Lightning puts in the checkpoint path, ``version`` the run id, and its files go under ``save_dir``
    (which Lightning also takes as ``trainer.log_dir``)."""

    def __init__(self, name=None, save_dir=".", version=None, offline=False, project=None):
        super().__init__()
        self._save_dir, self._project, self._id = save_dir, project or "lightning_logs", version or "generated-id"

    @property
    def name(self):
        return self._project

    @property
    def version(self):
        return self._id

    @property
    def save_dir(self):
        return self._save_dir

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        folder = Path(self._save_dir) / "standin"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")


def with_logger(tmp_path, logger: dict, steps: int) -> dict:
    config = tiny_config(tmp_path, "unused", max_steps=steps, version=None)
    config["trainer"]["logger"] = logger
    return config


def run_with(tmp_path, monkeypatch, logger: dict, group: str) -> Path:
    """Fit the tiny config with ``logger`` from tmp_path; return the one run folder under logs/<group>/ after
    checking that it holds the run's files and that nothing else was written beside it."""
    monkeypatch.chdir(tmp_path)  # a logger writing into the working directory would show up here
    cli = fit(tmp_path, with_logger(tmp_path, logger, steps=4))
    logs = tmp_path / "logs"
    assert sorted(p.name for p in logs.iterdir()) == [group], "only the run's group under logs/"
    run = only_run_dir(logs / group)
    assert RUN_FILES <= {p.name for p in run.iterdir()}, sorted(p.name for p in run.iterdir())
    assert sorted((run / "checkpoints").glob("*.ckpt")), "checkpoints in the run folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "data", "logs", "run.yaml"]
    assert Path(cli.trainer.log_dir).resolve() == run.resolve()
    return run


@pytest.mark.slow
def test_csv_logger_run_folder_holds_everything(tmp_path, monkeypatch):
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"name": "csv", "save_dir": "logs"}}
    run = run_with(tmp_path, monkeypatch, logger, "csv")
    assert (run / "metrics.csv").is_file()


@pytest.mark.slow
def test_wandb_style_logger_run_folder_holds_everything_and_resumes_there(tmp_path, monkeypatch):
    logger = {"class_path": f"{__name__}.WandbLike", "init_args": {"project": "proj", "name": "display name"}}
    run = run_with(tmp_path, monkeypatch, logger, "proj")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?", run.name)
    assert (run / "standin" / "metrics.jsonl").is_file()  # the logger's own files, inside the run folder
    cli = fit(tmp_path, with_logger(tmp_path, logger, steps=6), ckpt_path="last", tag="resume")
    assert Path(cli.trainer.ckpt_path).resolve() == (run / "checkpoints" / "last.ckpt").resolve()
    assert cli.trainer.logger.version == run.name  # a resume continues the same run (W&B: the same run id)
    assert (run / "config.1.yaml").is_file() and only_run_dir(tmp_path / "logs" / "proj") == run


@pytest.mark.slow
def test_wandb_offline_run_folder_holds_everything(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional (pip install lighthouse[loggers])")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "wb", "offline": True}}
    run = run_with(tmp_path, monkeypatch, logger, "wb")
    assert (run / "wandb").is_dir()


@pytest.mark.slow
def test_mlflow_run_folder_holds_everything(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is optional (pip install lighthouse[loggers])")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = {"class_path": "lightning.pytorch.loggers.MLFlowLogger", "init_args": {"experiment_name": "mlf"}}
    run_with(tmp_path, monkeypatch, logger, "mlf")
