"""Look-ahead probe: how much the Lighthouse layers' loss gains from the tile's later tokens (op README §8).

The paper's selection ranks the entries of a whole tile at once, so which entries a query early in a tile sees
may depend on tokens later in the same tile. The probe measures what that is worth on a checkpoint's weights:

- the loss of the first half of every selection tile, (a) as it is and (b) with the second half of that tile
  (one tile at a time, so earlier context stays real) replaced by the same positions of another window, targets
  unchanged; the per-window mean of b - a over the first halves, averaged over windows, with its standard error.
  A strictly causal model scores 0 (its first halves never read the second halves); a model that profits from
  looking ahead scores > 0.
- the look-ahead at single positions: in every tile one position ``c`` (drawn at random, seeded), everything after
  it in its tile replaced the same way; the loss at ``c`` then has no real token after it in reach (tiles are
  strictly causal towards later tiles), so replaced - real at ``c`` is the whole within-tile look-ahead of a random
  position, and at ``c - d`` the part that comes from tokens more than ``d`` ahead. The first-half measurement above
  cannot see a short-range look-ahead: only the few positions just before the middle of a tile have their near
  future replaced, so it is diluted by the tile length (a model that reads the next token scores 1/half a tile
  there, and the full amount here).
- the Lighthouse-minus-dense loss of the same weights by position inside a tile (averaged over tiles and windows):
  a look-ahead from far in the tile would lower it most where a tile's later tokens are nearest; it cannot tell a
  short-range look-ahead (every position but a tile's last few has its near future in the tile) from a model that
  reads differently with the two attentions.

    python -m lighthouse.eval.lookahead --ckpt PATH [--windows 64] [--split val] [--backend lighthouse] [--json F]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lighthouse.eval.window_losses import mean_and_standard_error
from lighthouse.model.memory import chunked_cross_entropy
from lighthouse.model.transformer import Transformer, dense_eager
from lighthouse.tool_args import (
    about,
    checked_device,
    entry_point,
    int_in,
    local_path,
    output_file,
    require,
    summary,
    write_json,
)

LossFn = Callable[[Tensor, Tensor], Tensor]
"""(inputs ``[B, N]``, targets ``[B, N]``) -> per-token next-token losses ``[B, N]`` (float, on the CPU)."""
BACKENDS = ("lighthouse", "lighthouse_naive", "sdpa")


# ---- the probe, on any loss function -----------------------------------------------------------------------------
def first_half_mask(seq_len: int, tile_len: int) -> Tensor:
    """bool ``[seq_len]``: True on the first half of every tile."""
    if tile_len < 2 or tile_len % 2 or seq_len % tile_len:
        raise ValueError(f"tile_len={tile_len} must be even and >= 2 and divide seq_len={seq_len}")
    return torch.arange(seq_len) % tile_len < tile_len // 2


def tile_variants(inputs: Tensor, donor: Tensor, tile_len: int) -> Tensor:
    """``[T, N]``: ``T`` copies of ``inputs`` ``[N]``, copy ``t`` with the second half of tile ``t`` (only) taken from
    ``donor`` ``[N]`` at the same positions. One tile per copy: a replaced second half is context for every later
    tile, so replacing several at once would also charge a strictly causal model for the context it lost."""
    seq_len, half = inputs.shape[-1], tile_len // 2
    first_half_mask(seq_len, tile_len)  # checks tile_len
    variants = inputs.repeat(seq_len // tile_len, 1)
    for t, start in enumerate(range(0, seq_len, tile_len)):
        variants[t, start + half : start + tile_len] = donor[start + half : start + tile_len]
    return variants


def cut_variant(inputs: Tensor, donor: Tensor, tile_start: int, tile_len: int, cut: int) -> Tensor:
    """``inputs`` ``[N]`` with the positions after ``tile_start + cut`` up to the tile's end taken from ``donor``."""
    variant = inputs.clone()
    variant[tile_start + cut + 1 : tile_start + tile_len] = donor[tile_start + cut + 1 : tile_start + tile_len]
    return variant


def variant_losses(loss_fn: LossFn, variants: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """``[V, N]`` variants of one window -> their losses ``[V, N]`` against its targets ``[1, N]``, ``batch_size``
    variants per call."""
    return torch.cat([loss_fn(v, targets.expand(len(v), -1)).double() for v in variants.split(batch_size)])


def distance_edges(distances: int) -> list[int]:
    """Edges of the look-ahead-distance ranges reported: 0, 1, 2-3, 4-7, ... up to ``distances``."""
    edges = [0] + [2**j for j in range(distances.bit_length()) if 2**j < distances]
    return [*edges, distances]


def bin_edges(length: int, bins: int) -> list[int]:
    """``bins`` + 1 edges splitting ``range(length)`` into near-equal consecutive ranges."""
    if not 1 <= bins <= length:
        raise ValueError(f"bins={bins} must be in [1, tile length {length}]")
    return [length * j // bins for j in range(bins + 1)]


@dataclass
class LookaheadResult:
    """What the probe measured; losses in nats per token, differences as ``mean +- standard error`` over windows."""

    windows: int
    seq_len: int
    tile_len: int
    first_half_real: float
    first_half_replaced: float
    difference: float
    standard_error: float
    lighthouse_loss: float
    dense_loss: float
    position_edges: list[int]
    lighthouse_minus_dense: list[float]
    lighthouse_minus_dense_se: list[float]
    per_window_difference: list[float]
    cut_real: float
    cut_replaced: float
    cut_difference: float
    cut_standard_error: float
    cut_distance_edges: list[int]
    cut_by_distance: list[float]
    cut_by_distance_se: list[float]

    def table(self) -> str:
        rows = [
            f"{self.windows} windows of {self.seq_len}, {self.seq_len // self.tile_len} tiles of {self.tile_len}",
            f"first half of each tile: real second half {self.first_half_real:.4f}, second half replaced "
            f"{self.first_half_replaced:.4f}; look-ahead (replaced - real) {self.difference:+.4f} "
            f"+- {self.standard_error:.4f} (s.e. over windows)",
            f"one random position per tile, everything after it in the tile replaced: real {self.cut_real:.4f}, "
            f"replaced {self.cut_replaced:.4f}; look-ahead {self.cut_difference:+.4f} +- {self.cut_standard_error:.4f}",
            f"whole windows: Lighthouse {self.lighthouse_loss:.4f}, dense {self.dense_loss:.4f}, "
            f"Lighthouse - dense {self.lighthouse_loss - self.dense_loss:+.4f}",
            "",
            "| tokens kept after the position | look-ahead from beyond them | s.e. |",
            "|---|---|---|",
        ]
        cuts = self.cut_distance_edges
        for j, (d, se) in enumerate(zip(self.cut_by_distance, self.cut_by_distance_se, strict=True)):
            kept = str(cuts[j]) if cuts[j + 1] == cuts[j] + 1 else f"{cuts[j]}-{cuts[j + 1] - 1}"
            rows.append(f"| {kept} | {d:+.4f} | {se:.4f} |")
        rows += ["", "| positions in the tile | Lighthouse - dense | s.e. |", "|---|---|---|"]
        edges = self.position_edges
        for j, (d, se) in enumerate(zip(self.lighthouse_minus_dense, self.lighthouse_minus_dense_se, strict=True)):
            rows.append(f"| {edges[j]}-{edges[j + 1]} | {d:+.4f} | {se:.4f} |")
        return "\n".join(rows)


def probe(
    lighthouse: LossFn,
    dense: LossFn,
    windows: Tensor,
    tile_len: int,
    bins: int = 16,
    batch_size: int = 1,
    distances: int = 64,
    seed: int = 0,
) -> LookaheadResult:
    """Run the probe on ``windows`` ``[W, N + 1]`` (W >= 2): per window one pass as it is, one dense, one per tile
    with that tile's second half replaced and one per tile with everything after a random position of it replaced,
    ``batch_size`` of those per call (1, the default, gives every pass the shape of the unchanged one, so a GPU
    picks the same kernels and rounding cannot pass for a look-ahead). The random positions (``seed``) leave
    ``distances`` positions before them in the tile, whose losses give the look-ahead by distance. Window i's
    replacements come from window i - 1 (cyclic): real text of the same split at the same positions."""
    n_windows, seq_len = windows.shape[0], windows.shape[1] - 1
    if n_windows < 2:
        raise ValueError(f"windows={n_windows} must be >= 2 (the replacements come from another window)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if not 1 <= distances <= tile_len - 1:
        raise ValueError(f"distances={distances} must be in [1, tile length - 1 = {tile_len - 1}]")
    first = first_half_mask(seq_len, tile_len)
    rng = np.random.default_rng(seed)
    cut_edges = distance_edges(distances)
    edges = bin_edges(tile_len, bins)
    donors = windows.roll(1, dims=0)
    num_tiles, half = seq_len // tile_len, tile_len // 2
    real_first, replaced_first, lh_mean, dense_mean, profile = [], [], [], [], []
    cut_real, cut_replaced, by_distance = [], [], []
    for i in range(n_windows):
        inputs, targets = windows[i : i + 1, :-1], windows[i : i + 1, 1:]  # [1, N]
        real = lighthouse(inputs, targets).double()[0]  # [N]
        base = dense(inputs, targets).double()[0]
        # [T, N]: row t measured on tile t's first half only
        replaced = variant_losses(lighthouse, tile_variants(inputs[0], donors[i, :-1], tile_len), targets, batch_size)
        replaced_first.append(
            torch.stack([replaced[t, t * tile_len : t * tile_len + half] for t in range(num_tiles)]).mean().item()
        )
        real_first.append(real[first].mean().item())
        lh_mean.append(real.mean().item())
        dense_mean.append(base.mean().item())
        # One random position per tile with `distances` positions before it and at least one after it in the tile.
        starts = range(0, seq_len, tile_len)
        cuts = [int(c) for c in rng.integers(distances - 1, tile_len - 1, size=num_tiles)]
        cut_inputs = torch.stack(
            [cut_variant(inputs[0], donors[i, :-1], start, tile_len, c) for start, c in zip(starts, cuts, strict=True)]
        )
        # [T, N]: row t measured at tile t's cut and the `distances` positions before it
        cut_losses = variant_losses(lighthouse, cut_inputs, targets, batch_size)
        cut_at = torch.tensor([start + c for start, c in zip(starts, cuts, strict=True)])
        at = cut_at[:, None] - torch.arange(distances)  # [T, distances]: the cut, 1 before it, ...
        changed = cut_losses.gather(1, at) - real[at]  # replaced - real, by distance from the cut
        cut_real.append(real[at[:, 0]].mean().item())
        cut_replaced.append(cut_losses.gather(1, at[:, :1]).mean().item())
        per_distance = changed.mean(0)
        by_distance.append([per_distance[lo:hi].mean().item() for lo, hi in pairwise(cut_edges)])
        by_position = (real - base).view(num_tiles, tile_len).mean(0)  # [tile_len], mean over the tiles
        profile.append([by_position[lo:hi].mean().item() for lo, hi in pairwise(edges)])
    per_window = np.subtract(replaced_first, real_first)
    difference, se = mean_and_standard_error(per_window)
    by_bin, by_bin_se = mean_and_standard_error(np.array(profile))
    cut_difference, cut_se = mean_and_standard_error(np.subtract(cut_replaced, cut_real))
    cut_by_distance, cut_by_distance_se = mean_and_standard_error(np.array(by_distance))
    return LookaheadResult(
        windows=n_windows,
        seq_len=seq_len,
        tile_len=tile_len,
        first_half_real=float(np.mean(real_first)),
        first_half_replaced=float(np.mean(replaced_first)),
        difference=float(difference),
        standard_error=float(se),
        lighthouse_loss=float(np.mean(lh_mean)),
        dense_loss=float(np.mean(dense_mean)),
        position_edges=edges,
        lighthouse_minus_dense=by_bin.tolist(),
        lighthouse_minus_dense_se=by_bin_se.tolist(),
        per_window_difference=per_window.tolist(),
        cut_real=float(np.mean(cut_real)),
        cut_replaced=float(np.mean(cut_replaced)),
        cut_difference=float(cut_difference),
        cut_standard_error=float(cut_se),
        cut_distance_edges=cut_edges,
        cut_by_distance=cut_by_distance.tolist(),
        cut_by_distance_se=cut_by_distance_se.tolist(),
    )


# ---- on a model ------------------------------------------------------------------------------------------------
def sequence_losses(model: Transformer, inputs: Tensor, targets: Tensor) -> Tensor:
    """Per-token losses ``[B, N]`` of ``targets`` given ``inputs`` (``Transformer.token_losses`` with the targets
    passed apart, so the probe can change inputs and keep the targets)."""
    chunk = model.config.loss_chunk_tokens
    if chunk is None:
        logits = model(inputs)
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    else:
        losses = chunked_cross_entropy(
            model.features(inputs).flatten(0, 1), model.output.weight, targets.flatten(), chunk
        )
    return losses.view_as(targets)


@contextmanager
def attention_backend(model: Transformer, name: str) -> Iterator[None]:
    """The model's non-dense layers on backend ``name`` (its dense layers stay dense); restores the backends."""
    saved = model.attention_backends
    model.set_attention_backend(name)
    try:
        yield
    finally:
        for layer, backend in zip(model.layers, saved, strict=True):
            layer.attention.backend = backend


def model_loss_fns(model: Transformer, backend: str, device: torch.device) -> tuple[LossFn, LossFn]:
    """(losses with the non-dense layers on ``backend``, losses with every layer dense) of ``model`` on ``device``;
    bf16 autocast on CUDA, as training runs."""

    def run(inputs: Tensor, targets: Tensor, dense: bool) -> Tensor:
        autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
        with torch.no_grad(), autocast, dense_eager(model) if dense else attention_backend(model, backend):
            return sequence_losses(model, inputs.to(device), targets.to(device)).float().cpu()

    return (lambda i, t: run(i, t, False)), (lambda i, t: run(i, t, True))


def tile_length(model: Transformer, seq_len: int) -> int:
    """Base positions of one selection tile of the model's Lighthouse layers at ``seq_len`` (op README §3)."""
    return model.config.lighthouse_geometry(seq_len).tile_len


def probed_layers(model: Transformer, phase: dict | None) -> list[int]:
    """The layers the probe runs on Lighthouse: the non-dense ones, if any phase of training used Lighthouse there
    (a model trained dense everywhere has nothing to look ahead with: the probe would measure a backend it never
    trained on). ``phase`` is ``training_phase``'s record, None for a checkpoint without one."""
    phases = (phase or {}).get("phases") or [{"attention": model.config.attention}]
    if all(p["attention"] == "sdpa" for p in phases):
        return []
    return sorted(set(range(model.config.n_layers)) - model.dense_layers)


def phase_note(phase: dict | None) -> str | None:
    """A one-line warning for a checkpoint past the first phase (the stage switch): the comparison reports assume the
    probe reads the weights at the switch, not after the dense recovery changed them."""
    if phase is None or int(phase["phase"]) == 0:
        return None
    return (
        f"warning: this checkpoint is past the stage switch (phase {phase['phase']}, {phase['attention']} from step "
        f"{phase['start']}): the probe measures the recovered weights, not those at the switch the reports compare"
    )


def main(argv: Sequence[str] | None = None) -> LookaheadResult:
    parser = argparse.ArgumentParser(prog="python -m lighthouse.eval.lookahead", description=summary(__doc__))
    parser.add_argument(
        "--ckpt",
        required=True,
        help="a .ckpt written by training, or a run folder (logs/demo/<start time>) or run name (logs/demo), "
        "optionally followed by /last: its newest checkpoint that verifies",
    )
    parser.add_argument("--windows", type=int, default=64, help="windows of the split, spread evenly (>= 2)")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument(
        "--backend", choices=BACKENDS, help="for the non-dense layers (default: lighthouse on CUDA, else _naive)"
    )
    parser.add_argument("--bins", type=int, default=16, help="position ranges inside a tile for the profile")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="tile variants per forward (1: every pass the same shape)"
    )
    parser.add_argument("--data-dir", help="where the run's data module keeps its shards (default: as trained)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    from lighthouse.checkpoint.read import dense_model, read_checkpoint, training_phase
    from lighthouse.eval.val_windows import read_windows, run_datamodule, split_identity, window_ids
    from lighthouse.train.run_dir import find_checkpoint  # the run layout; only the command needs it

    # Every check that needs no model before the checkpoint is read: a typo costs no time.
    if args.json is not None:  # a blank value too: output_file refuses it
        output_file("--json", args.json, reads=[args.ckpt])
    local_path("--ckpt", args.ckpt)
    int_in("--windows", args.windows, 2, why=" (the replacements come from another window)")
    int_in("--bins", args.bins, 1)
    int_in("--batch-size", args.batch_size, 1)
    device = checked_device("--device", args.device)
    backend = args.backend or ("lighthouse" if device.type == "cuda" else "lighthouse_naive")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # the kernels' CPU test mode (ops/lighthouse/interface)
    require(
        backend != "lighthouse" or device.type == "cuda" or interpreted,
        "--backend",
        backend,
        f"its Triton kernels need a CUDA device, not --device {args.device} (use lighthouse_naive there)",
    )
    ckpt = find_checkpoint(args.ckpt)
    with about("--ckpt", args.ckpt):
        checkpoint = read_checkpoint(ckpt)
        model = dense_model(checkpoint).to(device)
        phase = training_phase(checkpoint)
    layers = probed_layers(model, phase)
    config = model.config
    nothing = f"its model has no Lighthouse layers (attention {config.attention!r}, dense_layers {config.dense_layers})"
    require(bool(layers), "--ckpt", args.ckpt, nothing + ": every layer is dense, so there is nothing to probe")
    with about("--ckpt", args.ckpt):  # checked after the model: its data is prepared, which may take a while
        datamodule = run_datamodule(checkpoint, args.data_dir)
    # A run folder or name resolves to a file only now: the result must not overwrite it either.
    out = None if args.json is None else output_file("--json", args.json, reads=[args.ckpt, ckpt])
    trained = model.config.attention if phase is None else phase["attention"]  # what its last steps used
    seq_len = datamodule.settings.seq_len
    tile_len = tile_length(model, seq_len)
    int_in("--bins", args.bins, 1, tile_len, f" (the positions of a selection tile at seq_len {seq_len})")
    ids = window_ids(datamodule, args.windows, args.split)
    if len(ids) < 2:
        raise ValueError(f"the {args.split} split holds {len(ids)} window of {seq_len + 1} tokens; the probe needs 2")
    # Said after every check (an error stays the first line) and before the probe's minutes.
    note = phase_note(phase)
    if note:
        print(note, file=sys.stderr)
    lighthouse, dense = model_loss_fns(model, backend, device)
    windows = read_windows(datamodule, ids, args.split)
    result = probe(lighthouse, dense, windows, tile_len, args.bins, args.batch_size)
    when = "" if phase is None else f", phase {phase['phase']} from step {phase['start']}"
    print(
        f"look-ahead probe, {ckpt} (step {checkpoint.get('global_step')}), {args.split} split, backend "
        f"{backend} in layers {layers} (trained with {trained}{when})"
    )
    print(result.table())
    if out is not None:
        record = {
            "ckpt": str(ckpt),
            "step": checkpoint.get("global_step"),
            "split": args.split,
            "backend": backend,
            "trained_attention": trained,
            "training_phase": phase,
            "window_ids": [int(i) for i in ids],
            "data": split_identity(datamodule),
            **asdict(result),
        }
        write_json("--json", out, record)
    return result


if __name__ == "__main__":
    entry_point(main)
