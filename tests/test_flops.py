"""MFU arithmetic against hand counts for tiny models."""

import pytest

from lighthouse.model.config import ModelConfig
from lighthouse.model.flops import flops_per_token, matmul_params


def test_dense_flops_hand_count():
    config = ModelConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, ffn_hidden=16, seq_len=64)
    # wq, wk, wv, wo: 4 * 8*8 = 256; SwiGLU: 3 * 8*16 = 384; output: 8*10 = 80.
    assert matmul_params(config) == 720
    dense, actual = flops_per_token(config, seq_len=16, backends=["sdpa"])
    # 6 FLOPs per weight, plus causal attention 6 * N * H * D = 6 * 16 * 2 * 4.
    assert dense == actual == 6 * 720 + 768


def test_gqa_counts_fewer_kv_weights():
    config = ModelConfig(vocab_size=10, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=16, seq_len=64)
    assert matmul_params(config) == 720 - 2 * 8 * 4


def test_lighthouse_layer_counts_selected_length():
    config = ModelConfig(
        vocab_size=10,
        dim=8,
        n_layers=2,
        n_heads=2,
        ffn_hidden=16,
        seq_len=4096,
        attention="lighthouse_naive",
        dense_layers=[0],
        lighthouse=dict(levels=2, pooling_factor=4, topk=128),
    )
    n = 2048
    dense, actual = flops_per_token(config, seq_len=n, backends=["sdpa", "lighthouse_naive"])
    weights = 6 * matmul_params(config)
    per_layer_dense = 6 * n * 2 * 4
    # S_sel = N/p + (L-1)*p*K = 512 + 512 = 1024 entries; 6 * S_sel^2 / N * H * D per token.
    assert dense == weights + 2 * per_layer_dense
    assert actual == pytest.approx(weights + per_layer_dense + 6 * 1024 * 1024 / n * 8)


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),  # SXM: Lightning's figure
        ("NVIDIA H100 PCIe", 756.0),  # not the SXM figure
        ("NVIDIA H100 NVL", 835.0),  # Lightning lists the sparse figure
        ("NVIDIA H200", 989.0),  # Lightning finds no row for this name
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),  # Lightning reads it as an L4
        ("Some Future GPU", None),
    ],
    ids=lambda x: str(x).replace(" ", "_"),
)
def test_dense_bf16_peak_per_device(monkeypatch, name, tflops):
    import torch

    from lighthouse.train.device_peak import peak_flops_per_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak = peak_flops_per_device(dtype=torch.bfloat16)
    assert (peak is None) if tflops is None else peak == pytest.approx(tflops * 1e12)


def test_peak_override_and_cpu(monkeypatch):
    import torch

    from lighthouse.train.device_peak import compute_dtype, peak_flops_per_device

    assert peak_flops_per_device(override_tflops=100.0) == 100e12
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert peak_flops_per_device() is None
    assert [compute_dtype(p) for p in ("bf16-mixed", "16-mixed", "32-true", "64")] == [
        torch.bfloat16,
        torch.float16,
        torch.float32,
        torch.float64,
    ]
