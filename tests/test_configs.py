"""Every shipped config parses through the real CLI, and the paper configs match the paper's model."""

from pathlib import Path

import pytest
import yaml

from lighthouse.model.config import ModelConfig, model_flavor
from lighthouse.train.cli import main

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_parses_without_running(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    # The same validation as training, at the context length the CLI links in from the data (sizes a flavor
    # fills in are null in the printed config and resolved here).
    arch = ModelConfig(**printed["model"]["arch"], seq_len=printed["data"]["seq_len"])
    assert arch.dim > 0 and printed["data"]["seq_len"] > 0


@pytest.mark.parametrize("name", ["lh_64k", "recover_64k", "dense_64k"])
def test_64k_configs_are_the_paper_model(name):
    config = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
    model = ModelConfig(**config["model"]["arch"], seq_len=config["data"]["seq_len"])
    paper = model_flavor("paper")
    for field in ("dim", "n_layers", "n_heads", "ffn_hidden", "dense_layers"):
        assert getattr(model, field) == getattr(paper, field), field
    assert config["data"]["seq_len"] == 65536 and config["data"]["tokenizer"] == "byte"
    if name == "lh_64k":
        assert config["model"]["arch"]["lighthouse"] == {"levels": 3, "pooling_factor": 4, "topk": 2048}


def changed_lines(a: str, b: str) -> int:
    def body(name):
        return [line for line in (CONFIGS[0].parent / name).read_text().splitlines() if not line.startswith("#")]

    return sum(x != y for x, y in zip(body(a), body(b), strict=True))


TWINS = [
    ("demo", "demo_recover"),
    ("extend_64k", "recover_extend_64k"),
    *((f"lh_{n}", f"recover_{n}") for n in ("16k", "64k", "128k", "256k")),
]


@pytest.mark.parametrize("stage1, stage2", [(f"{a}.yaml", f"{b}.yaml") for a, b in TWINS], ids=[a for a, _ in TWINS])
def test_recovery_twin_differs_in_few_lines(stage1, stage2):
    assert changed_lines(stage1, stage2) == 4  # max_steps, model.arch.attention, stage.switch_step, min_start_step


@pytest.mark.parametrize(
    "name, seq_len", [("lh_16k", 16384), ("lh_128k", 131072), ("lh_256k", 262144), ("lh_1m", 1048576)]
)
def test_long_context_configs_use_their_whole_top_k(name, seq_len, recwarn):
    """Each config picks a K its context can use whole (the model warns when tiles shrink it)."""
    from lighthouse.model.transformer import warn_about_selection

    config = yaml.safe_load((CONFIGS[0].parent / f"{name}.yaml").read_text())
    assert config["data"]["seq_len"] == seq_len
    arch = ModelConfig(**config["model"]["arch"], seq_len=seq_len)
    assert arch.uses_lighthouse() and (arch.dim, arch.n_layers, arch.n_heads) == (1024, 30, 8)
    warn_about_selection(arch)
    assert not [w for w in recwarn if "does not fit" in str(w.message) or "save nothing" in str(w.message)]
    if name == "lh_1m":  # the authors' 1M flavour
        assert arch.dense_layers == [] and (arch.lighthouse.levels, arch.lighthouse.topk) == (4, 4096)


STRATEGIES = sorted((CONFIGS[0].parent / "strategy").glob("*.yaml"))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=[p.stem for p in STRATEGIES])
def test_strategy_snippet_composes_with_run_config(strategy, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS[0].parent / "lh_64k.yaml"), "--config", str(strategy), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    arch = ModelConfig(**printed["model"]["arch"], seq_len=printed["data"]["seq_len"])
    assert printed["trainer"]["devices"] == -1 and arch.n_layers == 30
