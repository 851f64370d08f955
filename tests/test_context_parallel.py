"""Context parallelism on the CPU (gloo): the all-to-all pair, cp=2 and cp=2 x dp=2 against one process, resume
across cp degrees, and the config errors. Each spawned job checks several cases: processes start slowly here."""

from __future__ import annotations

import pytest
import torch
from context_parallel_workers import exchange, launch, train, train_parallel

from lighthouse.context_parallel import check_divisible, shard_window

SEQ_LEN, WINDOWS, STEPS = 256, 4, 3
BACKENDS = ("sdpa", "lighthouse_naive")
# fp32 on the CPU: the parallel run sums the same products in another order (slices, gradient all-reduce).
LOSS_RTOL, GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-4, 1e-6


def assert_same_training(parallel: dict, single: dict, label: str) -> None:
    assert parallel["losses"] == pytest.approx(single["losses"], rel=LOSS_RTOL), label
    for name, grad in single["grads"].items():
        torch.testing.assert_close(
            parallel["grads"][name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL, msg=lambda m, n=name: f"{label} {n}: {m}"
        )


def test_shard_window_keeps_the_next_target():
    tokens = torch.arange(2 * 9).view(2, 9)  # 8 inputs and their targets
    assert shard_window(tokens, 0, 2).tolist() == [[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]]
    assert shard_window(tokens, 1, 2).tolist() == [[4, 5, 6, 7, 8], [13, 14, 15, 16, 17]]
    with pytest.raises(ValueError, match="3 equal"):
        shard_window(tokens, 0, 3)


@pytest.mark.parametrize(
    "heads, kv_heads, seq_len, cp, match",
    [
        (4, 4, 256, 3, r"must divide model.arch.n_heads=4 .*valid values are \[1, 2, 4\]"),
        (4, 1, 256, 2, r"must divide model.arch.n_kv_heads=1 .*valid values are \[1\]"),
        (4, 4, 250, 4, r"must divide data.seq_len=250"),
        (4, 4, 256, 0, r"must be an integer >= 1"),
    ],
    ids=["heads", "kv_heads", "seq_len", "zero"],
)
def test_check_divisible_names_field_and_valid_values(heads, kv_heads, seq_len, cp, match):
    with pytest.raises(ValueError, match=match) as err:
        check_divisible(heads, kv_heads, seq_len, cp)
    assert "trainer.strategy.init_args.context_parallel_size" in str(err.value)


def test_all_to_all_pair_exact_with_gradients(tmp_path):
    launch(exchange, 2, tmp_path)


def _jobs(steps: int = STEPS) -> list[dict]:
    return [dict(attention=a, seq_len=SEQ_LEN, windows=WINDOWS, steps=steps) for a in BACKENDS]


@pytest.mark.parametrize("world, cp", [(2, 2), (4, 2)], ids=["cp2", "cp2xdp2"])
def test_context_parallel_training_matches_one_process(tmp_path, world, cp):
    out = tmp_path / "parallel.pt"
    launch(train_parallel, world, tmp_path, cp, _jobs(), str(out))
    results = torch.load(out, weights_only=True)
    for job, parallel in zip(_jobs(), results, strict=True):
        single = train(**job)
        assert_same_training(parallel, single, f"{job['attention']} world={world} cp={cp}")
