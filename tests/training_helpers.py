"""Run the real entry point (LightningCLI) in-process on a tiny model and read back what it logged."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from lighthouse.eval.run_logs import EVENTS_GLOB, read_run

REPO = Path(__file__).resolve().parents[1]


def cli_subprocess_args(folder: Path, config: dict, tag: str, extra: list[str] = ()) -> tuple[list[str], dict]:
    """Command and environment that run ``src/train.py fit`` on ``config`` (written to ``folder/<tag>.yaml``) in a
    separate process, with tests/ importable for the test-only callbacks and plugins in plugins.py."""
    path = folder / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])}
    return [sys.executable, str(REPO / "src" / "train.py"), "fit", "--config", str(path), *extra], env


def write_text_corpus(folder: Path, n_docs: int = 12, seed: int = 0) -> Path:
    """A small corpus of varied English-like documents, a few thousand bytes each."""
    rng = random.Random(seed)
    words = (
        "the model reads long documents and attends to a compact summary of the past while the "
        "pyramid keeps coarse views of distant tokens and fine views of salient ones"
    ).split()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(300, 1500)))
        (folder / f"doc{i:03d}.txt").write_text(text)
    return folder


def tiny_arch(**overrides) -> dict:
    """``model.arch`` of the CPU-sized model the training tests run: 3 layers of width 32, layer 0 dense, the others
    Lighthouse with L=2, p=4, K=128 (the smallest geometry a few-hundred-token window allows)."""
    arch = dict(
        dim=32,
        n_layers=3,
        n_heads=2,
        ffn_hidden=64,
        dense_layers=[0],
        lighthouse={"levels": 2, "pooling_factor": 4, "topk": 128},
    )
    return {**arch, **overrides}


def tiny_config(
    tmp_path: Path,
    name: str,
    base: str = "demo.yaml",
    *,
    max_steps: int = 8,
    attention: str = "lighthouse_naive",
    switch_step: int | None = None,
    every_n: int = 4,
    seq_len: int = 512,
    version: str | None = "",
) -> dict:
    """A CPU-second version of a shipped config: same structure, tiny model and corpus, all paths in tmp_path.

    ``version`` "" keeps every launch of ``name`` in ``tmp_path/logs/<name>/`` (what most tests read back);
    None gives each launch its own run directory, as the shipped configs do."""
    config = copy.deepcopy(yaml.safe_load((REPO / "configs" / base).read_text()))
    logs = tmp_path / "logs"
    trainer = config["trainer"]
    # CPU even on a GPU box: these runs test training logic (bitwise resume, stages), not kernels.
    trainer.update(
        max_steps=max_steps,
        val_check_interval=every_n,
        log_every_n_steps=1,
        accelerator="cpu",
        precision="32-true",
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer["logger"]["init_args"].update(save_dir=str(logs), name=name, version=version)
    for cb in trainer["callbacks"]:
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"].update(every_n_train_steps=every_n)
    config["stage"]["switch_step"] = switch_step
    config["throughput"].update(window=2, skip_steps=1)
    config["model"]["arch"].update(tiny_arch(attention=attention))
    config["model"].update(warmup_steps=2, schedule_steps=20)
    corpus = write_text_corpus(tmp_path / "corpus")
    config["data"].update(
        corpus=str(corpus), data_dir=str(tmp_path / "data"), seq_len=seq_len, batch_size=2, num_workers=0, val_batches=1
    )
    return config


def tiny_bench_config(
    shipped: Path,
    folder: Path,
    *,
    n_docs: int = 12,
    trainer: dict | None = None,
    model: dict | None = None,
    data: dict | None = None,
) -> Path:
    """A shipped bench/configs file shrunk to a CPU run of the tiny naive-Lighthouse model on a text corpus in
    ``folder``, written as ``folder/tiny.yaml``; ``trainer``, ``model`` and ``data`` add a campaign's own settings."""
    config = yaml.safe_load(shipped.read_text())
    config["trainer"].update(accelerator="cpu", precision="32-true", enable_model_summary=False, **(trainer or {}))
    config["throughput"].update(window=1, skip_steps=1)
    arch = config["model"]["arch"]
    arch.pop("flavor", None)  # the tiny sizes below stand in for a named flavor
    arch.update(tiny_arch(attention="lighthouse_naive", activation_checkpointing=False))
    config["model"].update(warmup_steps=2, compile=False, **(model or {}))
    config["data"].update(
        corpus=str(write_text_corpus(folder / "corpus", n_docs=n_docs)),
        data_dir=str(folder / "data"),
        seq_len=512,
        batch_size=2,
        num_workers=0,
        val_batches=1,
        progress=False,
        **(data or {}),
    )
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch and the jobs it starts (OMP_NUM_THREADS) on one thread, restored after: a model this small runs
    fastest on one, and a busy machine stays usable."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env


def fit(tmp_path: Path, config: dict, ckpt_path: str | None = None, tag: str = "run", extra: list[str] = ()):
    from lighthouse.train.cli import main

    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(path), *extra]
    if ckpt_path is not None:
        args += ["--ckpt_path", ckpt_path]
    return main(args)


@functools.cache
def two_stage_run(base: Path) -> Path:
    """The run directory of one finished tiny run in ``base`` (12 steps, dense from step 6, validation and
    checkpoints every 4 steps), built once per test session for the tests that only read a run back."""
    config = tiny_config(base, "two_stage", max_steps=12, switch_step=6, every_n=4, version=None)
    fit(base, config)
    return only_run_dir(base / "logs" / "two_stage")


def run_dirs(group: Path) -> list[Path]:
    """The run directories of one run name (``<root>/<name>/<version>/``), oldest first."""
    return sorted(p for p in group.iterdir() if p.is_dir()) if group.is_dir() else []


def only_run_dir(group: Path) -> Path:
    runs = run_dirs(group)
    assert len(runs) == 1, f"expected one run directory in {group}, found {[p.name for p in runs]}"
    return runs[0]


def logged_scalars(log_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of a TensorBoard scalar over all launches in ``log_dir`` (later launches win, as
    lighthouse.eval.run_logs reads them); {} where no run has logged yet."""
    if not any(log_dir.glob(EVENTS_GLOB)):
        return {}
    return read_run(log_dir).series(tag).as_dict()


def renumber_seed(folder: Path, seed: int) -> None:
    """Make a copied bench/branch.py seed folder another seed: its plan.json and every config its runs wrote (the
    branch report checks the two agree), as two sessions' seeds of one design look."""
    import json

    plan = json.loads((folder / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps({**plan, "seed": seed}))
    for config in (*folder.glob("configs/*.yaml"), *folder.glob("*/config*.yaml")):
        text = config.read_text()
        config.write_text(text.replace(f"seed_everything: {plan['seed']}\n", f"seed_everything: {seed}\n"))
