"""Sizes are bounded before anything is allocated: absurd model sizes are refused at config validation with the
field named (the memory they need is estimated from the config, lighthouse.model.budget), in Python and from the
command line (exit 2, seconds, not an allocation traceback or an hour of building layers)."""

from __future__ import annotations

import time

import pytest
from training_helpers import cli_subprocess_args, tiny_config

from lighthouse.data.settings import DataSettings
from lighthouse.model import budget
from lighthouse.model.config import ModelConfig
from lighthouse.train import exits
from lighthouse.train.cli import main as cli_main

ABSURD = {
    "n_layers": (dict(n_layers=100_000), "n_layers=100000"),
    "dim": (dict(dim=1_000_000), "dim=1000000"),
    "seq_len": (dict(seq_len=100_000_000), "data.seq_len = 100000000"),
    "vocab": (dict(vocab_size=10**9), "vocab_size=1000000000"),
    "init_std": (dict(init_std=-1.0), "init_std=-1.0"),
    "init_std_nan": (dict(init_std=float("nan")), "init_std=nan"),
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_model_sizes_are_refused_naming_the_field(case):
    fields, named = ABSURD[case]
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        ModelConfig(**fields)
    assert named in str(err.value)
    assert time.perf_counter() - start < 1.0  # refused from the numbers, nothing built


def test_the_estimate_counts_the_parameters_of_the_real_model():
    import torch

    from lighthouse.model.transformer import Transformer

    for tie in (False, True):
        config = ModelConfig(vocab_size=300, dim=48, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=80)
        config.tie_embeddings = tie
        model = Transformer(config)
        real = sum(p.numel() for p in model.parameters())
        estimate = budget.parameter_count(300, 48, 3, 4, 2, 12, 80, tie)
        assert estimate == real, (tie, estimate, real)
        del model
    assert torch.zeros(1).numel() == 1


def test_the_paper_model_at_one_million_tokens_still_passes():
    ModelConfig(flavor="paper_1m", seq_len=2**20)


def test_vocab_multiple_of_is_bounded():
    with pytest.raises(
        ValueError, match=r"vocab_multiple_of=1000000000 is invalid: must be an integer in \[1, 65536\]"
    ):
        DataSettings(vocab_multiple_of=10**9)
    DataSettings(vocab_multiple_of=128)


@pytest.mark.parametrize(
    "flag, value, named",
    [
        ("--model.arch.n_layers", "10000000", "n_layers=10000000"),  # the tiny model: 10^5 layers fit in 4 GB
        ("--data.seq_len", "1000000000", "1000000000"),  # 10^8 passes a 256 GB host with this tiny model
        ("--data.vocab_multiple_of", "1000000000", "vocab_multiple_of"),
        ("--model.arch.init_std", "-1", "init_std"),
    ],
)
def test_the_command_line_refuses_them_with_exit_2(flag, value, named, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, "sizes")
    cmd, _ = cli_subprocess_args(tmp_path, config, "sizes", [flag, value])
    start = time.perf_counter()
    code = exits.run(cli_main, cmd[2:])  # after "python src/train.py": what the entry point runs, in-process
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err
    assert time.perf_counter() - start < 60
