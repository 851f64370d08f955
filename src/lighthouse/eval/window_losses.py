"""Each validation window's loss with dense attention, saved with the run, so two runs can be compared window by
window (a paired difference, whose spread is far smaller than that of two independent means):

    python -m lighthouse.eval.window_losses --ckpt PATH [--windows 256] [--out FILE]
    python -m lighthouse.eval.window_losses --compare A.json B.json

Windows are named by their index in the validation split (lighthouse/eval/val_windows.py); the file records the
split's identity (seq_len, data and tokenizer fingerprints), and ``compare`` pairs windows by index and refuses
files of different splits. The losses are those validation computes (``Transformer.token_losses``, every layer
dense): with ``--windows`` = ``val_batches * batch_size`` their mean is the run's ``val/loss_dense``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lighthouse.eval.positions import bucket_name, position_buckets
from lighthouse.model.transformer import Transformer, dense_eager
from lighthouse.tool_args import (
    about,
    checked_device,
    entry_point,
    int_in,
    local_path,
    output_folder,
    result_file,
    summary,
    write_json,
)

FORMAT = "lighthouse.window_losses/1"


@dataclass
class WindowLosses:
    """Per-window mean losses of one checkpoint: ``losses[i]`` is window ``window_ids[i]`` of the validation split,
    ``bucket_losses[i][j]`` its mean over positions ``buckets[j]`` (eval/positions.py, as validation logs them)."""

    ckpt: str
    step: int | None
    attention: str
    autocast: str | None
    split: dict
    window_ids: list[int]
    losses: list[float]
    buckets: list[str]
    bucket_losses: list[list[float]]
    format: str = FORMAT

    @property
    def mean(self) -> float:
        return float(np.mean(self.losses))

    def save(self, path: str | Path) -> Path:
        """Written all or nothing (tool_args.write_json): a failed write leaves the previous file whole."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json("--out", path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> WindowLosses:
        """A saved evaluation, refused naming ``path`` unless it has every field and one finite loss (and one row of
        bucket losses) per distinct window: --compare pairs them by window."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not a window-loss file of format {FORMAT!r} (format {found!r})")
        names = {f.name for f in fields(cls)}
        if missing := sorted(names - set(data) - {"format"}):
            raise ValueError(f"{path} has no {', '.join(missing)}: damaged")
        loaded = cls(**{k: v for k, v in data.items() if k in names})
        ids, losses, rows = loaded.window_ids, loaded.losses, loaded.bucket_losses
        shapes_fit = isinstance(ids, list) and isinstance(losses, list) and isinstance(rows, list)
        if not shapes_fit or not len(ids) == len(losses) == len(rows) or len(set(map(str, ids))) != len(ids):
            raise ValueError(f"{path} needs one loss and one bucket row per distinct window: damaged")
        if not all(isinstance(r, list) and len(r) == len(loaded.buckets) for r in rows):
            raise ValueError(f"{path} needs one loss per bucket {loaded.buckets} in every bucket row: damaged")
        values = np.asarray([*losses, *(x for r in rows for x in r)], dtype=float)  # a string raises ValueError
        if not np.isfinite(values).all():
            raise ValueError(f"{path} holds a loss that is not finite: damaged")
        return loaded


@dataclass
class PairedDifference:
    """``b - a`` over the windows both files hold: the mean of the per-window differences and its standard error,
    overall and per position bucket."""

    windows: int
    mean_a: float
    mean_b: float
    difference: float
    standard_error: float
    buckets: list[str]
    bucket_difference: list[float]
    bucket_standard_error: list[float]

    def table(self) -> str:
        rows = [
            f"b - a over {self.windows} paired windows: {self.difference:+.4f} +- {self.standard_error:.4f} (s.e.); "
            f"a {self.mean_a:.4f}, b {self.mean_b:.4f}",
            "| positions | b - a | s.e. |",
            "|---|---|---|",
        ]
        rows += [
            f"| {name} | {d:+.4f} | {se:.4f} |"
            for name, d, se in zip(self.buckets, self.bucket_difference, self.bucket_standard_error, strict=True)
        ]
        return "\n".join(rows)


def mean_and_standard_error(values: np.ndarray) -> tuple[float, float]:
    """Mean over axis 0 and its standard error (sample s.d. / sqrt(n)); the error is nan for one value."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    se = values.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full(values.shape[1:], math.nan)
    return values.mean(axis=0), se


def compare(a: WindowLosses, b: WindowLosses) -> PairedDifference:
    """Pair two evaluations window by window (by window index); refuses evaluations of different splits."""
    for key in ("seq_len", "data_fingerprint", "tokenizer_fingerprint"):
        if a.split.get(key) != b.split.get(key):
            raise ValueError(
                f"the two evaluations read different validation splits ({key}: {a.split.get(key)!r} vs "
                f"{b.split.get(key)!r}); their window indices do not name the same tokens"
            )
    if a.buckets != b.buckets:
        raise ValueError(f"different position buckets: {a.buckets} vs {b.buckets}")
    if a.autocast != b.autocast:  # bf16 against fp32 differs by more than the checkpoints may
        raise ValueError(f"the two evaluations ran at different precisions (autocast {a.autocast!r} vs {b.autocast!r})")
    index_b = {w: i for i, w in enumerate(b.window_ids)}
    pairs = [(i, index_b[w]) for i, w in enumerate(a.window_ids) if w in index_b]
    if not pairs:
        raise ValueError("the two evaluations share no window")
    ia, ib = (np.array(p) for p in zip(*pairs, strict=True))
    diff, se = mean_and_standard_error(np.asarray(b.losses)[ib] - np.asarray(a.losses)[ia])
    by_bucket, by_bucket_se = mean_and_standard_error(np.asarray(b.bucket_losses)[ib] - np.asarray(a.bucket_losses)[ia])
    return PairedDifference(
        windows=len(pairs),
        mean_a=float(np.mean(np.asarray(a.losses)[ia])),
        mean_b=float(np.mean(np.asarray(b.losses)[ib])),
        difference=float(diff),
        standard_error=float(se),
        buckets=list(a.buckets),
        bucket_difference=by_bucket.tolist(),
        bucket_standard_error=by_bucket_se.tolist(),
    )


# ---- evaluation --------------------------------------------------------------------------------------------------
def window_buckets(train_len: int, seq_len: int) -> list[tuple[int, int]]:
    """Validation's position buckets (of the model's training length) that a window of seq_len reaches, clipped to
    it."""
    return [(lo, min(hi, seq_len)) for lo, hi in position_buckets(train_len) if lo < seq_len]


@torch.no_grad()
def dense_window_losses(
    model: Transformer, windows: Tensor, buckets: list[tuple[int, int]], batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(per-window mean loss ``[W]``, per-window per-bucket mean ``[W, len(buckets)]``) of ``windows``
    ``[W, N + 1]``, every layer dense, in fp64 from fp32 token losses."""
    means, by_bucket = [], []
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    with dense_eager(model), autocast:
        for batch in windows.split(batch_size):
            losses = model.token_losses(batch.to(device)).double().cpu()  # [B, N]
            means.append(losses.mean(1))
            by_bucket.append(torch.stack([losses[:, lo:hi].mean(1) for lo, hi in buckets], dim=1))
    return torch.cat(means).numpy(), torch.cat(by_bucket).numpy()


def default_out(ckpt: Path) -> Path:
    """``<run dir>/window_losses/<ckpt stem>.json`` for a checkpoint in a run's ``checkpoints/``, else beside it."""
    if ckpt.parent.name == "checkpoints":
        return ckpt.parent.parent / "window_losses" / f"{ckpt.stem}.json"
    return ckpt.with_name(f"{ckpt.stem}.window_losses.json")


def evaluate_checkpoint(
    ckpt_path: str | Path,
    windows: int = 256,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    batch_size: int | None = None,
) -> WindowLosses:
    """Dense per-window losses of ``windows`` validation windows (fewer if the split holds fewer)."""
    from lighthouse.checkpoint.read import dense_model, read_checkpoint
    from lighthouse.eval.val_windows import read_windows, run_datamodule, split_identity, window_ids

    device = torch.device(device)
    with about("--ckpt", ckpt_path):
        checkpoint = read_checkpoint(ckpt_path)
        model = dense_model(checkpoint).to(device)
    datamodule = run_datamodule(checkpoint, data_dir)
    ids = window_ids(datamodule, windows)
    seq_len = datamodule.settings.seq_len
    buckets = window_buckets(model.config.seq_len, seq_len)
    means, by_bucket = dense_window_losses(
        model, read_windows(datamodule, ids), buckets, batch_size or datamodule.settings.batch_size, device
    )
    return WindowLosses(
        ckpt=str(ckpt_path),
        step=checkpoint.get("global_step"),
        attention="sdpa (every layer dense)",
        autocast="bfloat16" if device.type == "cuda" else None,
        split=split_identity(datamodule),
        window_ids=[int(i) for i in ids],
        losses=means.tolist(),
        buckets=[bucket_name(lo, hi) for lo, hi in buckets],
        bucket_losses=by_bucket.tolist(),
    )


def checked_out(value: str | Path, reads: Sequence[str | Path] = ()) -> Path:
    """The file ``--out`` names, checked before the evaluation: not blank, a folder, a file it ``reads`` or one that
    holds no JSON result (tool_args.result_file), and its folder (created by ``save`` where missing) can be made
    and written."""
    path = result_file("--out", str(value), reads)
    output_folder("--out", str(path.parent), create=False)
    return path


def main(argv: Sequence[str] | None = None) -> WindowLosses | PairedDifference:
    parser = argparse.ArgumentParser(prog="python -m lighthouse.eval.window_losses", description=summary(__doc__))
    parser.add_argument(
        "--ckpt",
        help="a .ckpt written by training, or a run folder (logs/demo/<start time>) or run name (logs/demo), "
        "optionally followed by /last: its newest checkpoint that verifies",
    )
    parser.add_argument("--windows", type=int, default=256, help="validation windows (fewer if the split is smaller)")
    parser.add_argument("--out", help="default: <run dir>/window_losses/<ckpt name>.json")
    parser.add_argument("--data-dir", help="where the run's data module keeps its shards (default: as trained)")
    parser.add_argument("--batch-size", type=int, help="windows per forward (default: the run's batch_size)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="pair two saved files: b - a per window")
    args = parser.parse_args(argv)
    if args.compare:
        saved = []
        for path in args.compare:
            with about("--compare", path):
                saved.append(WindowLosses.load(path))
        paired = compare(*saved)
        print(paired.table())
        return paired
    if not args.ckpt:
        parser.error("--ckpt (or --compare A B) is required")
    from lighthouse.checkpoint.io import is_remote
    from lighthouse.train.run_dir import find_checkpoint  # the run layout; only the command needs it

    # Every check that needs no checkpoint before it is read: a typo costs no time.
    out = checked_out(args.out, reads=[args.ckpt]) if args.out is not None else None  # blank: refused
    local_path("--ckpt", args.ckpt)
    int_in("--windows", args.windows, 1)
    if args.batch_size is not None:
        int_in("--batch-size", args.batch_size, 1, why=" (omit it for the run's batch_size)")
    device = checked_device("--device", args.device)
    ckpt = find_checkpoint(args.ckpt)
    if out is None:
        if is_remote(ckpt):
            raise ValueError(f"--ckpt={args.ckpt!r} is a URL, with no run folder to write into: pass --out FILE")
        out = checked_out(default_out(Path(ckpt)))
    result = evaluate_checkpoint(ckpt, args.windows, device, args.data_dir, args.batch_size)
    out = result.save(out)
    got = len(result.window_ids)
    note = "" if got == args.windows else f" (the validation split holds {got}, not {args.windows})"
    print(
        f"window losses, {ckpt} (step {result.step}), dense attention: {got} windows{note}, "
        f"mean {result.mean:.4f}; written to {out}"
    )
    return result


if __name__ == "__main__":
    entry_point(main)
