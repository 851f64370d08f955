"""The Lighthouse options (README §2b, §3b) in the model: config fields, their validation and docs, the attention
wiring (per_kv_group never repeats K/V), and a tiny GQA model (4 query / 2 KV heads) training through the CLI."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from training_helpers import REPO, fit, logged_scalars, tiny_arch, tiny_config

from lighthouse.model.attention import INNER_ATTENTION, sdpa_attention
from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.model.transformer import Transformer
from lighthouse.ops.lighthouse import lighthouse_attention, naive_lighthouse_attention
from lighthouse.ops.lighthouse.geometry import check_lighthouse_params
from lighthouse.train.cli import main

LH = dict(levels=2, pooling_factor=4, topk=128)


def _config(**lighthouse) -> ModelConfig:
    return ModelConfig(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=64,
        seq_len=512,
        attention="lighthouse_naive",
        lighthouse=dict(LH, **lighthouse),
    )


@pytest.mark.parametrize(
    ("lighthouse", "match"),
    [
        (
            dict(selection="per_head"),
            r"model\.arch\.lighthouse\.selection='per_head' is not one of \('paper', 'per_kv_group'\)",
        ),
        (dict(scorer="softmax"), r"model\.arch\.lighthouse\.scorer='softmax' is not one of \('norm', 'dilated'\)"),
        (dict(dilation=0), r"model\.arch\.lighthouse\.dilation=0 is invalid: it must be an integer >= 1"),
        (dict(scorer="dilated", dilation=3), r"model\.arch\.lighthouse\.dilation=3 must divide data\.seq_len=512"),
        (dict(causal="yes"), r"model\.arch\.lighthouse\.causal='yes' is invalid: it must be a bool"),
    ],
)
def test_invalid_options_name_the_flag(lighthouse, match):
    with pytest.raises(ValueError, match=match):
        _config(**lighthouse)


def test_defaults_are_the_papers():
    lh = LighthouseConfig()
    assert (lh.selection, lh.scorer, lh.dilation) == ("paper", "norm", 4)
    # The dilation only has to divide the length when the dilated scorer uses it.
    assert _config(dilation=3).lighthouse.dilation == 3


def test_print_config_shows_the_option_docs(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs" / "demo.yaml"), "--print_config=comments"])
    text = capsys.readouterr().out
    assert "query scores max-pooled over the group" in text and "stride-`dilation` subsequences" in text
    assert "Strictly causal selection (op README §8b)" in text


@pytest.mark.parametrize("backend", ["lighthouse_naive", "lighthouse"])
@pytest.mark.parametrize("selection", ["paper", "per_kv_group"])
def test_backend_repeats_kv_only_for_the_papers_selection(backend, selection, monkeypatch):
    """The op receives K/V with H_kv heads under per_kv_group (no H copies) and H heads under the paper's."""
    seen = {}

    def fake_op(q, k, v, **params):
        seen.update(k_heads=k.shape[2], v_heads=v.shape[2], **params)
        return torch.zeros_like(q)

    q, k, v = torch.zeros(1, 512, 4, 8), torch.zeros(1, 512, 2, 8), torch.zeros(1, 512, 2, 8)
    lh = LighthouseConfig(**LH, selection=selection, scorer="dilated", dilation=2)
    inner = INNER_ATTENTION[backend](lh)
    assert inner.op is {"lighthouse_naive": naive_lighthouse_attention, "lighthouse": lighthouse_attention}[backend]
    monkeypatch.setattr(inner, "op", fake_op)
    inner(q, k, v)
    heads = 2 if selection == "per_kv_group" else 4
    assert (seen["k_heads"], seen["v_heads"]) == (heads, heads)
    assert (seen["selection"], seen["scorer"], seen["dilation"]) == (selection, "dilated", 2)
    assert (seen["levels"], seen["pooling_factor"], seen["topk"]) == (2, 4, 128)


@pytest.mark.parametrize("attention", ["lighthouse", "lighthouse_naive"])
def test_causal_reaches_both_lighthouse_backends(attention):
    """One name from the YAML to the op for both backends."""
    config = ModelConfig(
        dim=32, n_layers=2, n_heads=4, ffn_hidden=64, seq_len=512, attention=attention,
        lighthouse=dict(LH, causal=True),
    )  # fmt: skip
    model = Transformer(config)
    op = {"lighthouse": lighthouse_attention, "lighthouse_naive": naive_lighthouse_attention}[attention]
    assert all(layer.attention._inner.op is op for layer in model.layers)
    assert all(layer.attention._inner.params["causal"] is True for layer in model.layers)
    assert LighthouseConfig().causal is False


def test_causal_model_logits_never_see_later_tokens():
    """model.arch.lighthouse.causal reaches the op (one name from the YAML to the op): with every layer on
    Lighthouse, changing the tokens from position t on leaves every logit before t bitwise unchanged, t inside a
    tile, on both backends; with causal=false the same change moves logits before t (the paper's within-tile
    look-ahead). The backends' logits are not compared here: the kernels score by squared norms, the reference by
    norms, and on arbitrary floats a last-bit difference can flip a near-tie in a rolling cutoff (measured on this
    model); tests/ops compares them exactly on inputs whose scores are exact."""
    lighthouse = dict(levels=2, pooling_factor=2, topk=256)  # 2 tiles of 256 candidates: the selection matters
    tokens = torch.randint(0, 257, (1, 1024), generator=torch.Generator().manual_seed(1))
    t = 700
    changed = tokens.clone()
    changed[:, t:] = torch.randint(0, 257, (1, 1024 - t), generator=torch.Generator().manual_seed(2))
    moved = {}
    for attention, causal in (("lighthouse_naive", True), ("lighthouse_naive", False), ("lighthouse", True)):
        arch = dict(dim=32, n_layers=2, n_heads=2, ffn_hidden=64, seq_len=1024, attention=attention)
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**arch, lighthouse=dict(lighthouse, causal=causal))).eval()
        assert all(layer.attention._inner.params["causal"] is causal for layer in model.layers)
        with torch.no_grad():
            before, after = model(tokens), model(changed)
        moved[attention, causal] = not torch.equal(before[:, :t], after[:, :t])
    assert moved == {("lighthouse_naive", True): False, ("lighthouse_naive", False): True, ("lighthouse", True): False}


def test_dense_attention_takes_no_lighthouse_parameters():
    """Before, every backend was called with the LighthouseConfig, which SDPA ignored."""
    assert INNER_ATTENTION["sdpa"](LighthouseConfig(**LH)) is sdpa_attention
    assert list(inspect.signature(sdpa_attention).parameters) == ["q", "k", "v"]


def test_switching_back_finds_the_same_inner_attention():
    """Dense validation and phase changes switch layers back and forth; a new callable each time would make compiled
    blocks recompile at every switch (and fall back to eager past the recompile limit)."""
    attention = Transformer(_config()).layers[1].attention
    lighthouse = attention._inner
    attention.backend = "sdpa"
    assert attention._inner is sdpa_attention
    attention.backend = "lighthouse_naive"
    assert attention._inner is lighthouse


def test_the_model_checks_the_lighthouse_parameters_once(monkeypatch):
    """Building the config and the model checks (L, p, K) once; before, the config checked them twice (directly and
    inside lighthouse_geometry) and the model a third time for its top-k warning. Each op call checks again: the
    op's functional is the op library's public boundary and the only place that sees the sequence length."""
    calls = []

    def counting(*args):
        calls.append(args)
        return check_lighthouse_params(*args)

    monkeypatch.setattr("lighthouse.model.config.check_lighthouse_params", counting)
    monkeypatch.setattr("lighthouse.ops.lighthouse.geometry.check_lighthouse_params", counting)
    Transformer(_config())
    assert calls == [(2, 4, 128)]


@pytest.mark.parametrize(
    "lighthouse",
    [dict(selection="per_kv_group"), dict(scorer="dilated"), dict(selection="per_kv_group", scorer="dilated")],
    ids=["per_kv_group", "dilated", "per_kv_group-dilated"],
)
def test_tiny_gqa_model_trains_through_the_cli(tmp_path, lighthouse):
    config = tiny_config(tmp_path, "gqa", max_steps=4, every_n=4)
    config["model"]["arch"].update(tiny_arch(attention="lighthouse_naive", n_heads=4, n_kv_heads=2))
    config["model"]["arch"]["lighthouse"].update(lighthouse)
    fit(tmp_path, config)
    losses = logged_scalars(tmp_path / "logs" / "gqa", "train/loss")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses.values())
    assert losses[max(losses)] < losses[min(losses)]
