"""What a validation step measures: the model as it trains, and the same weights with every layer dense."""

import pytest
import torch

from lighthouse.model.config import ModelConfig
from lighthouse.train.lit_module import LitLM


def lighthouse_module(**kwargs) -> LitLM:
    torch.manual_seed(0)
    arch = ModelConfig(
        vocab_size=61,
        dim=32,
        n_layers=2,
        n_heads=2,
        ffn_hidden=64,
        seq_len=512,
        attention="lighthouse_naive",
        lighthouse=dict(levels=2, pooling_factor=4, topk=128),
    )
    return LitLM(arch, **kwargs).eval()


@pytest.mark.parametrize("dense_validation", [True, False])
def test_dense_validation_loss_is_computed_only_when_asked(dense_validation):
    module = lighthouse_module(dense_validation=dense_validation)
    tokens = torch.randint(0, 61, (1, 513), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        module.validation_step({"tokens": tokens}, 0)
        dense = module.model  # the reference: the same weights run densely, by hand
        dense.set_attention_backend("sdpa")
        expected = module.token_losses(tokens).mean()
    assert module.val_loss.update_called
    assert module.val_loss_dense.update_called is dense_validation
    if dense_validation:
        torch.testing.assert_close(module.val_loss_dense.compute(), expected, rtol=1e-6, atol=1e-6)
        assert module.val_loss.compute() != module.val_loss_dense.compute()  # Lighthouse's own loss differs
