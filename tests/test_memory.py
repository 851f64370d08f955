"""Memory options compute what the plain path computes: same losses and gradients, less kept memory."""

import dataclasses
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

from lighthouse.model.config import ModelConfig
from lighthouse.model.memory import HostOffload, chunked_cross_entropy
from lighthouse.model.transformer import Transformer


def tiny(**overrides) -> ModelConfig:
    base = dict(
        vocab_size=61,
        dim=32,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=80,
        seq_len=64,
        activation_checkpointing=True,
    )
    return ModelConfig(**{**base, **overrides})


def loss_and_grads(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def twins(**options) -> tuple[Transformer, Transformer]:
    """The plain model and one with ``options``, same weights, fp64 so differences are the options' own."""
    torch.manual_seed(0)
    plain = Transformer(tiny()).double().train()
    other = Transformer(tiny(**options)).double().train()
    other.load_state_dict(plain.state_dict())
    return plain, other


TOKENS = torch.randint(0, 61, (2, 47), generator=torch.Generator().manual_seed(1))  # N=46: no chunk divides it


@pytest.mark.parametrize(
    "options",
    [
        dict(checkpoint_offload=True),
        dict(mlp_chunk_tokens=7),
        dict(activation_checkpointing=False, mlp_chunk_tokens=16),
    ],
    ids=["offload", "mlp-chunk7", "mlp-chunk16-no-ac"],
)
def test_option_gives_the_plain_loss_and_gradients(options):
    plain, other = twins(**options)
    loss, grads = loss_and_grads(plain, TOKENS)
    loss_o, grads_o = loss_and_grads(other, TOKENS)
    torch.testing.assert_close(loss_o, loss, rtol=1e-12, atol=0)
    for name in grads:
        torch.testing.assert_close(grads_o[name], grads[name], rtol=1e-10, atol=1e-12, msg=name)


def test_bf16_block_inputs_recompute_exactly_and_stay_within_bf16_noise():
    plain, other = twins(checkpoint_dtype="bfloat16")
    other.float(), plain.float()
    loss, _ = loss_and_grads(plain, TOKENS)
    loss_b, grads_b = loss_and_grads(other, TOKENS)
    # The same function without checkpointing: round the residual to bf16 at every block boundary by hand.
    reference = Transformer(
        dataclasses.replace(other.config, activation_checkpointing=False, checkpoint_dtype="float32")
    )
    reference.load_state_dict(other.state_dict())
    reference.zero_grad(set_to_none=True)
    x = reference.tok_embeddings(TOKENS[:, :-1])
    cos, sin = reference.rope(x.shape[1])
    for layer in reference.layers:
        x = layer(x.to(torch.bfloat16), cos, sin)
    logits = reference.output(reference.norm(x))
    loss_r = F.cross_entropy(logits.float().flatten(0, 1), TOKENS[:, 1:].flatten())
    loss_r.backward()
    torch.testing.assert_close(loss_b, loss_r.detach(), rtol=0, atol=0)
    for name, p in reference.named_parameters():
        torch.testing.assert_close(grads_b[name], p.grad, rtol=0, atol=0, msg=name)
    assert abs(loss_b.item() - loss.item()) < 1e-2 * loss.item()  # bf16 rounding of the residual, no more


def test_host_offload_moves_exactly_the_block_inputs():
    _, model = twins(checkpoint_offload=True)
    seen: list[HostOffload] = []
    original_enter = HostOffload.__enter__

    def spy(self):
        seen.append(self)
        return original_enter(self)

    HostOffload.__enter__ = spy
    try:
        logits = model(TOKENS[:, :-1])
    finally:
        HostOffload.__enter__ = original_enter
    (offload,) = seen
    block_input = 2 * 46 * 32 * 8  # [B, N, dim] fp64, one per block; the RoPE tables stay
    assert len(offload._entries) == 3 and offload.offloaded_bytes == 3 * block_input
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_host_copies_are_freed_with_the_graph_without_the_cycle_collector():
    """The host copies of a step (GiBs of pinned memory at long context) must go when the step's graph goes, by
    reference counting alone: copies kept alive by a reference cycle wait for a full collection, and a few steps
    of such garbage exhaust host memory."""
    _, model = twins(checkpoint_offload=True)
    copies: list[weakref.ref] = []
    original_exit = HostOffload.__exit__

    def spy(self, *exc):
        copies.extend(weakref.ref(entry["host"]) for entry in self._entries)
        return original_exit(self, *exc)

    gc.collect()
    gc.disable()
    HostOffload.__exit__ = spy
    try:
        loss = model(TOKENS[:, :-1]).sum()
        assert len(copies) == 3 and all(c() is not None for c in copies)  # the graph holds them
        loss.backward()
        del loss
        assert [c() for c in copies] == [None] * 3
    finally:
        HostOffload.__exit__ = original_exit
        gc.enable()


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_cross_entropy_equals_the_plain_one(chunk):
    torch.manual_seed(2)
    hidden = torch.randn(23, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (23,))
    grad_out = torch.rand(23, dtype=torch.float64)
    plain = F.cross_entropy(hidden @ weight.T, targets, reduction="none")
    (plain * grad_out).sum().backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    chunked = chunked_cross_entropy(hidden, weight, targets, chunk)
    (chunked * grad_out).sum().backward()
    torch.testing.assert_close(chunked, plain.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weight.grad, expected[1], rtol=1e-10, atol=1e-12)


def test_chunked_cross_entropy_under_autocast_matches_the_plain_path():
    torch.manual_seed(3)
    hidden = torch.randn(40, 32)
    weight = torch.randn(50, 32)
    targets = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="none")
        chunked = chunked_cross_entropy(hidden, weight, targets, 16)
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-5)


def test_lit_module_loss_chunking_gives_the_same_losses():
    from lighthouse.train.lit_module import LitLM

    torch.manual_seed(4)
    plain = LitLM(tiny(activation_checkpointing=False))
    chunked = LitLM(tiny(activation_checkpointing=False, loss_chunk_tokens=9))
    chunked.load_state_dict(plain.state_dict())
    a, b = plain.token_losses(TOKENS), chunked.token_losses(TOKENS)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    a.mean().backward(), b.mean().backward()
    for (name, p), q in zip(plain.named_parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(activation_checkpointing=False, checkpoint_dtype="bfloat16"), "set model.arch.activation_checkpointing"),
        (dict(checkpoint_offload=True, activation_checkpointing=False), "set model.arch.activation_checkpointing"),
        (dict(checkpoint_dtype="float16"), "checkpoint_dtype='float16' is not one of"),
        (dict(mlp_chunk_tokens=0), "mlp_chunk_tokens=0 is invalid"),
        (dict(loss_chunk_tokens=-4), "loss_chunk_tokens=-4 is invalid"),
    ],
    ids=["dtype-without-ac", "offload-without-ac", "dtype", "mlp-chunk", "loss-chunk"],
)
def test_invalid_memory_options_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_model_warns_once_when_the_context_shrinks_the_top_k():
    import warnings

    config = tiny(
        attention="lighthouse_naive",
        activation_checkpointing=False,
        seq_len=4096,
        lighthouse=dict(levels=3, pooling_factor=4, topk=1024),
    )
    with pytest.warns(UserWarning, match=r"topk=1024 does not fit 4096 positions.*effective top-k of 256"):
        Transformer(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Transformer(dataclasses.replace(config, lighthouse=dict(levels=3, pooling_factor=4, topk=256)))


def test_model_warns_when_the_compacted_sequence_is_no_shorter_than_the_context():
    import warnings

    # levels 2, p 4, K 128 at 512 positions: S_sel = 512 / 4 + 4 * 128 = 640, more than dense attention's 512.
    lighthouse = dict(levels=2, pooling_factor=4, topk=128)
    config = tiny(attention="lighthouse_naive", activation_checkpointing=False, seq_len=512, lighthouse=lighthouse)
    with pytest.warns(UserWarning, match=r"as many entries as dense attention or more \(S_sel = 640, 125% of the"):
        Transformer(config)
    with warnings.catch_warnings():  # 4096 positions: S_sel = 1024 + 512 = 1536, 38 %
        warnings.simplefilter("error")
        Transformer(dataclasses.replace(config, seq_len=4096))
