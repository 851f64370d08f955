"""The look-ahead probe (lighthouse.eval.lookahead): 0 for a strictly causal model, clearly > 0 for one that reads
the next token, and sensitive to the within-tile channel of the real Lighthouse layers (op README §8)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from tool_probes import (
    SHARED_BAD_FLAGS,
    assert_refused_before_the_checkpoint,
    command_error,
    json_folder_missing,
    run_module,
)
from trained_models import two_stage_checkpoints

from lighthouse.eval.lookahead import (
    cut_variant,
    distance_edges,
    first_half_mask,
    main,
    model_loss_fns,
    probe,
    sequence_losses,
    tile_length,
    tile_variants,
)
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer

VOCAB = 257


def random_windows(n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq_len + 1), generator=torch.Generator().manual_seed(seed))


def tiny_model(seq_len: int = 2048) -> Transformer:
    """Untrained, layer 0 dense, layers 1-2 Lighthouse with L=2, p=4, K=256: at 2048 two tiles of 1024, each with
    256 coarsest entries competing for 128 refinements, so the selection does depend on the scores."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB,
        dim=32,
        n_layers=3,
        n_heads=2,
        ffn_hidden=64,
        dense_layers=[0],
        seq_len=seq_len,
        attention="lighthouse_naive",
        lighthouse={"levels": 2, "pooling_factor": 4, "topk": 256},
    )
    return Transformer(config).eval()


def test_one_second_half_replaced_per_variant_and_nothing_else():
    inputs, donor = torch.arange(16), -torch.arange(1, 17)
    assert tile_variants(inputs, donor, tile_len=8).tolist() == [
        [0, 1, 2, 3, -5, -6, -7, -8, 8, 9, 10, 11, 12, 13, 14, 15],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -13, -14, -15, -16],
    ]
    assert first_half_mask(8, 4).tolist() == [True, True, False, False] * 2
    with pytest.raises(ValueError, match="tile_len=6 must be even and >= 2 and divide seq_len=16"):
        first_half_mask(16, 6)


def test_a_cut_variant_replaces_the_rest_of_one_tile_only():
    inputs, donor = torch.arange(16), -torch.arange(1, 17)
    assert cut_variant(inputs, donor, tile_start=8, tile_len=8, cut=2).tolist() == [
        *range(11),
        -12,
        -13,
        -14,
        -15,
        -16,
    ]
    assert distance_edges(64) == [0, 1, 2, 4, 8, 16, 32, 64]
    assert distance_edges(5) == [0, 1, 2, 4, 5]
    assert distance_edges(1) == [0, 1]


def test_sequence_losses_are_the_models_token_losses():
    model = tiny_model()
    tokens = random_windows(2, 2048)
    with torch.no_grad():
        assert torch.equal(sequence_losses(model, tokens[:, :-1], tokens[:, 1:]), model.token_losses(tokens))


def peeking_losses(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A model that reads the next input token (the target itself, in a real window) and bets on it."""
    peek = torch.cat([inputs[:, 1:], inputs[:, -1:]], dim=1)  # [B, N]: the token after each position
    logits = 10.0 * F.one_hot(peek, VOCAB).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def causal_losses(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The same bet on the current token instead: strictly causal."""
    logits = 10.0 * F.one_hot(inputs, VOCAB).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def test_a_model_that_reads_the_next_token_is_caught():
    windows = random_windows(6, 512)
    tile = 128
    result = probe(peeking_losses, causal_losses, windows, tile_len=tile, bins=4)
    # Only the last first-half position of each tile reads a replaced token: its loss rises from ~0 to ~10 (unless
    # the donor's token happens to be the same), so the first-half mean rises by about 10 / 64.
    assert result.difference > 0.1
    assert result.difference > 10 * result.standard_error
    assert result.difference == pytest.approx(10 / (tile // 2), rel=0.1)
    assert result.first_half_real < 0.02  # log(1 + 256 e^-10)
    # The same model read causally is far worse: Lighthouse - dense is negative in every position range.
    assert all(d < -5 for d in result.lighthouse_minus_dense)
    # The causal twin measures nothing.
    null = probe(causal_losses, causal_losses, windows, tile_len=tile, bins=4)
    assert null.difference == 0 and null.standard_error == 0
    assert null.lighthouse_minus_dense == [0.0] * 4


def reads_ahead(by: int):
    """A "model" whose loss at position s is the input token at s + ``by`` (as a number): it changes exactly when
    that token is replaced."""

    def losses(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.cat([inputs[:, by:], inputs[:, -1:].expand(-1, by)], dim=1).double()

    return losses


def test_a_short_range_look_ahead_is_measured_whole_at_single_positions():
    """The first-half measurement dilutes a next-token peek by half a tile; the single-position cut sees all of it:
    ~10 nats at the cut (the peeked token replaced), nothing from beyond one token."""
    windows = random_windows(6, 512)
    result = probe(peeking_losses, causal_losses, windows, tile_len=128, bins=4, distances=16)
    assert result.difference == pytest.approx(10 / 64, rel=0.1)  # diluted
    assert result.cut_real < 0.02 and result.cut_difference == pytest.approx(10, rel=0.05)
    assert result.cut_difference > 10 * result.cut_standard_error
    assert result.cut_distance_edges == [0, 1, 2, 4, 8, 16]
    assert result.cut_by_distance[0] == pytest.approx(10, rel=0.05)
    assert result.cut_by_distance[1:] == [0.0] * 4
    null = probe(causal_losses, causal_losses, windows, tile_len=128, bins=4, distances=16)
    assert null.cut_difference == 0 and null.cut_by_distance == [0.0] * 5


def test_the_look_ahead_distance_profile_locates_the_peek():
    """Reading 4 positions ahead: the cut position and the 3 before it lose real tokens, earlier ones keep them."""
    result = probe(reads_ahead(4), reads_ahead(0), random_windows(4, 512), tile_len=128, bins=4, distances=16)
    d0, d1, d23, d47, d815 = result.cut_by_distance
    assert d0 != 0 and d1 != 0 and d23 != 0  # distances 0-3 read a replaced token
    assert d47 == 0.0 and d815 == 0.0
    assert reads_ahead(0)(torch.tensor([[3, 5]]), torch.tensor([[0, 0]])).tolist() == [[3.0, 5.0]]


def test_strictly_causal_attention_measures_zero():
    model = tiny_model()
    windows = random_windows(4, 2048)
    sdpa, dense = model_loss_fns(model, "sdpa", torch.device("cpu"))
    result = probe(sdpa, dense, windows, tile_length(model, 2048), bins=8)
    assert result.tile_len == 1024
    assert abs(result.difference) <= 2 * result.standard_error + 1e-6
    assert max(abs(d) for d in result.per_window_difference) < 1e-7  # exactly 0 on the CPU
    assert max(abs(d) for d in result.cut_by_distance) < 1e-7 and result.cut_difference == 0
    assert max(abs(d) for d in result.lighthouse_minus_dense) < 1e-5  # both passes dense: the same losses


def test_lighthouse_first_halves_read_their_tiles_second_halves():
    """The real Lighthouse layers (reference backend): the replaced second halves change the first halves' losses
    (§8's within-tile channel), where the dense run of the same weights changed nothing (test above)."""
    model = tiny_model()
    windows = random_windows(4, 2048)
    lighthouse, dense = model_loss_fns(model, "lighthouse_naive", torch.device("cpu"))
    result = probe(lighthouse, dense, windows, tile_length(model, 2048), bins=8)
    # Untrained weights gain nothing from it, so the changes are small and of either sign, but in every window.
    assert all(d != 0 for d in result.per_window_difference)
    assert max(abs(d) for d in result.per_window_difference) > 1e-5
    assert math.isfinite(result.standard_error) and result.standard_error > 0
    assert len(result.lighthouse_minus_dense) == 8
    assert any(abs(d) > 1e-4 for d in result.lighthouse_minus_dense)
    assert result.lighthouse_loss - result.dense_loss == pytest.approx(
        sum(result.lighthouse_minus_dense) / 8, abs=1e-9
    )  # equal bins: the profile averages to the whole-window difference
    assert model.attention_backends == ["sdpa", "lighthouse_naive", "lighthouse_naive"]  # restored


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="windows=1 must be >= 2"):
        probe(causal_losses, causal_losses, random_windows(1, 256), tile_len=128)
    with pytest.raises(ValueError, match=r"bins=200 must be in \[1, tile length 128\]"):
        probe(causal_losses, causal_losses, random_windows(2, 256), tile_len=128, bins=200)
    with pytest.raises(ValueError, match=r"distances=128 must be in \[1, tile length - 1 = 127\]"):
        probe(causal_losses, causal_losses, random_windows(2, 256), tile_len=128, distances=128)


# Each with a checkpoint that does not exist: every flag is checked before the checkpoint is looked for.
BAD_FLAGS = {
    "windows-1": (
        ["--windows", "1"],
        "--windows=1 is invalid: must be an integer >= 2 (the replacements come from another window)",
    ),
    "bins-0": (["--bins", "0"], "--bins=0 is invalid: must be an integer >= 1"),
    "batch-size-0": (["--batch-size", "0"], "--batch-size=0 is invalid: must be an integer >= 1"),
    "kernels-on-cpu": (
        ["--backend", "lighthouse"],
        "--backend='lighthouse' is invalid: its Triton kernels need a CUDA device, not --device cpu "
        "(use lighthouse_naive there)",
    ),
    **SHARED_BAD_FLAGS,
    **json_folder_missing("probe.json"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_a_bad_flag_is_one_line_and_exit_2_before_the_checkpoint_is_read(case, tmp_path, capsys, monkeypatch):
    assert_refused_before_the_checkpoint(main, BAD_FLAGS[case], tmp_path, capsys, monkeypatch)


def test_only_a_sharded_checkpoint_folder_gets_the_consolidate_advice(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    (tmp_path / "empty_run").mkdir()
    line = command_error(main, ["--ckpt", str(tmp_path / "empty_run"), "--device", "cpu"], capsys)
    assert line == (
        f"error: --ckpt {tmp_path}/empty_run: no usable checkpoint in {tmp_path}/empty_run/checkpoints/ or "
        f"{tmp_path}/empty_run/*/checkpoints/. Pass a .ckpt file, a run folder (logs/<name>/<start time>) or a run "
        "name (logs/<name>)"
    )
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(b"")
    line = command_error(main, ["--ckpt", str(sharded), "--device", "cpu"], capsys)
    assert line == (
        f"error: --ckpt={str(sharded)!r} is invalid: {sharded} is a sharded (FSDP) checkpoint folder. Consolidate it "
        "into one file first:"
    )


@pytest.mark.slow
def test_a_run_name_is_its_newest_checkpoint_and_bins_are_checked_against_its_tiles(tmp_path_factory, capsys):
    """``--ckpt logs/<name>`` reads that run's newest checkpoint (its seq_len 512 makes one tile of 512), refused
    before any window is evaluated."""
    logs = two_stage_checkpoints(tmp_path_factory)[2].parents[2]
    line = command_error(main, ["--ckpt", str(logs), "--device", "cpu", "--bins", "513"], capsys)
    tile = "(the positions of a selection tile at seq_len 512)"
    assert line == f"error: --bins=513 is invalid: must be an integer in [1, 512] {tile}"


@pytest.mark.slow
def test_the_module_exits_2_without_a_traceback(tmp_path):
    done = run_module("lighthouse.eval.lookahead", "--ckpt", str(tmp_path / "x.ckpt"), "--bins", "0")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[0] == "error: --bins=0 is invalid: must be an integer >= 1", done.stderr


@pytest.mark.slow
def test_command_on_a_checkpoint(tmp_path_factory, tmp_path, capsys):
    ckpt = two_stage_checkpoints(tmp_path_factory)[1]
    out = tmp_path / "probe.json"
    causal = main(["--ckpt", str(ckpt), "--windows", "3", "--backend", "sdpa", "--device", "cpu", "--bins", "4"])
    assert causal.difference == 0 and causal.windows == 3
    result = main(["--ckpt", str(ckpt), "--windows", "3", "--device", "cpu", "--bins", "4", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "backend lighthouse_naive in layers [1, 2]" in printed and "| 0-128 |" in printed
    record = json.loads(out.read_text())
    assert record["backend"] == "lighthouse_naive" and record["tile_len"] == 512 == result.tile_len
    assert len(record["window_ids"]) == 3 and record["difference"] == result.difference
