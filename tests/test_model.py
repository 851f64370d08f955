"""The decoder LM on CPU: shapes, initial loss, learning, causality, backend switching, config validation."""

import math

import pytest
import torch
import torch.nn.functional as F

from lighthouse.model.attention import apply_rope, rope_tables
from lighthouse.model.config import ModelConfig, model_flavor
from lighthouse.model.transformer import Transformer


def tiny(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, ffn_hidden=64, seq_len=256)
    return ModelConfig(**{**base, **overrides})


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1], ids=["mha", "gqa2", "mqa"])
def test_forward_backward_shapes(n_kv_heads):
    torch.manual_seed(0)
    model = Transformer(tiny(n_kv_heads=n_kv_heads))
    tokens = torch.randint(0, 97, (3, 50))
    logits = model(tokens)
    assert logits.shape == (3, 50, 97)
    logits.float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_initial_loss_is_uniform():
    torch.manual_seed(0)
    vocab = 257
    model = Transformer(model_flavor("debug", vocab_size=vocab, attention="sdpa"))
    tokens = torch.randint(0, vocab, (4, 256))
    loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
    assert abs(loss.item() - math.log(vocab)) < 0.05


@pytest.mark.slow
def test_overfits_one_batch():
    torch.manual_seed(0)
    model = Transformer(tiny())
    tokens = torch.randint(0, 97, (2, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_dense_model_is_causal():
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    tokens = torch.randint(0, 97, (1, 64))
    changed = tokens.clone()
    changed[0, 40:] = (changed[0, 40:] + 1) % 97
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :40], b[:, :40])
    assert not torch.equal(a[:, 40:], b[:, 40:])


def test_rope_preserves_norm_and_relative_position():
    cos, sin = rope_tables(16, 64, 10_000.0)
    x = torch.randn(1, 64, 2, 16, dtype=torch.float64)
    y = apply_rope(x.float(), cos, sin).double()
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    # <R_m q, R_n k> depends only on m - n.
    q, k = torch.randn(16), torch.randn(16)
    seq = torch.stack([q, k]).expand(64, 2, 16)[None].contiguous()
    r = apply_rope(seq, cos, sin)[0]
    dots = [(r[m, 0] @ r[m - 3, 1]).item() for m in (3, 10, 50)]
    assert max(dots) - min(dots) < 1e-4


def test_set_attention_backend_keeps_dense_layers():
    model = Transformer(
        tiny(
            n_layers=4,
            dense_layers=[0, 3],
            attention="lighthouse_naive",
            seq_len=512,
            lighthouse=dict(levels=2, pooling_factor=4, topk=128),
        )
    )
    assert model.attention_backends == ["sdpa", "lighthouse_naive", "lighthouse_naive", "sdpa"]
    model.set_attention_backend("sdpa")
    assert model.attention_backends == ["sdpa"] * 4
    with pytest.raises(ValueError, match="not one of"):
        model.set_attention_backend("flash")


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(n_heads=5), "n_heads=5 must divide model.arch.dim=32"),
        (dict(n_kv_heads=3), "n_kv_heads=3 must divide"),
        (dict(dense_layers=[0, 2]), r"\[0, n_layers-1\] = \[0, 1\]"),
        (dict(attention="flash"), "model.arch.attention='flash' is not one of"),
        (dict(dim=0), "model.arch.dim=0 is invalid"),
        (dict(lighthouse=dict(levels=1)), "levels=1 is invalid: it must be an integer >= 2"),
        (dict(lighthouse=dict(pooling_factor=3)), "pooling_factor=3 is invalid: it must be a power of two"),
        (dict(lighthouse=dict(topk=100)), "topk=100 is invalid: it must be a positive multiple of 128"),
    ],
    ids=["heads-divide-dim", "kv-heads", "dense-layer-range", "backend", "dim", "levels", "pooling", "topk"],
)
def test_invalid_model_config_names_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_seq_len_rule_checked_against_lighthouse():
    lighthouse = dict(levels=3, pooling_factor=4, topk=256)
    tiny(attention="lighthouse_naive", seq_len=4096, lighthouse=lighthouse)
    with pytest.raises(ValueError, match=r"must be >= 128 \* pooling_factor\*\*\(levels-1\) = 2048"):
        tiny(attention="lighthouse_naive", seq_len=1024, lighthouse=lighthouse)
    with pytest.raises(ValueError, match="data.seq_len does not fit model.arch.lighthouse"):
        tiny(attention="lighthouse_naive", seq_len=2048 + 8, lighthouse=lighthouse)
    tiny(seq_len=1000, lighthouse=lighthouse)  # dense models take any length


def test_rope_tables_extend_past_the_training_length():
    model = Transformer(tiny(seq_len=16)).eval()
    tokens = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        long = model(tokens)
        assert model.rope_cos.shape[0] == 40
        fresh = Transformer(tiny(seq_len=40)).eval()
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(long, fresh(tokens), rtol=0, atol=0)


def test_flavor_sizes():
    assert 45e6 < Transformer(model_flavor("small")).num_params() < 55e6
    paper = model_flavor("paper")
    assert (paper.dim, paper.n_layers, paper.n_heads, paper.head_dim, paper.ffn_hidden) == (1024, 30, 8, 128, 1536)
    assert paper.dense_layers == [0, 1, 28, 29]


@pytest.mark.slow
def test_debug_flavor_learns_with_lighthouse_naive():
    """The debug model with the reference Lighthouse layer in its middle layers trains on CPU."""
    torch.manual_seed(0)
    config = model_flavor("debug", attention="lighthouse_naive", vocab_size=32, seq_len=512)
    model = Transformer(config)
    assert model.attention_backends == ["sdpa", "lighthouse_naive", "lighthouse_naive", "sdpa"]
    # A learnable stream: a random period-16 pattern repeated, so later tokens are predictable from earlier ones.
    pattern = torch.randint(0, 32, (2, 16))
    tokens = pattern.repeat(1, 33)[:, :513]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_weight_decay_groups_by_name():
    from lighthouse.train.lit_module import LitLM

    module = LitLM(tiny(n_layers=2))
    decay, keep = module.parameter_groups()
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert sorted(names[id(p)] for p in keep) == sorted(
        [
            "layers.0.attention_norm.weight",
            "layers.0.ffn_norm.weight",
            "layers.1.attention_norm.weight",
            "layers.1.ffn_norm.weight",
            "norm.weight",
        ]
    )
    assert len(decay) + len(keep) == len(list(module.model.parameters()))
    # A sharded rank sees empty 1-D views of parameters it does not own: the groups must not change.
    with torch.no_grad():
        module.model.layers[0].attention.wq.weight.data = torch.empty(0)
    assert [len(g) for g in module.parameter_groups()] == [len(decay), len(keep)]
