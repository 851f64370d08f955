"""The branch design of bench/branch.py in miniature, on the CPU: does the gap that Lighthouse + recovery leaves to
dense training shrink when the run is longer?

The H200 branch runs (bench/report/branch) end +0.17 nats above dense after 800 steps: the sparse phase learns
less per step and 300 dense steps do not catch up. The paper's run is 16k steps. If the deficit is a fixed cost of
early training, the gap after recovery should fall as the run grows at fixed shares; if it is a per-step rate, it
should stay. This trains the leak scripts' tiny model (bench/leak_iid.py ``build``; stdlib corpus, bytes) for each
total length S in ``--steps``: one dense warm-up to W = warmup_share * S, then from its weights and optimizer state
two arms on the same batches, D (dense to S) and LH (Lighthouse to round(share * S), then dense to S). The LR follows
one cosine schedule of S steps in both (the GPU design's). ``--warmup-share 0`` is the from-scratch design: both
arms from the same initial weights (``warmup_loss`` is then the untrained model's). Reported per S and seed: each
arm's final loss with every layer dense on ``--val-windows`` fixed validation windows, and LH - D paired over those
windows.

Several ``--share`` values give one LH arm each, off the same warm-up (how long the Lighthouse phase runs before
the recovery). ``--speedup R`` adds, per share, the equal-time arm E of the GPU design, with the GPU's speed taken
as given since this CPU run cannot measure it (its Lighthouse path is the naive reference): a Lighthouse step
costs 1/R of a dense step (R = 2.30 measured on the H200 at 32768 for the `small` flavour: 543k against 236k
tokens/s), so LH's arm after W costs (switch - W) / R + (S - switch) dense steps, and E trains that many dense
steps from W with the rest of the LR schedule fitted into them (lighthouse.train.schedule's ``rescale_lr``: the
LR is continuous at W and anneals to its floor at E's last step). Several speed-ups give one E each, so the
speed-up at which LH and E break even can be read off one run. Each E's record also holds D's loss at E's last
step (``d_at_e_end``, the same windows; records since the fourteenth session): E minus it is what annealing in fewer
steps gains or costs against D's longer schedule, the offset bench/equal_time_estimate.py takes from the GPU seeds
that ran E. Each run's record lists its arms under ``arms`` and each arm's E's under ``equal_time`` (records written
before 2026-12-03's share sweep hold one arm's keys at the top level; before 2026-12-04, one E's keys in its arm).

    PYTHONPATH=src python bench/tiny_branch.py --steps 300 600 1200 --seeds 0 --json out.json   # 1 thread
    PYTHONPATH=src python bench/tiny_branch.py --steps 600 --share 0.5 0.625 0.75 0.875 --speedup 2.3 --json out.json
    PYTHONPATH=src python bench/tiny_branch.py --steps 1200 --speedup 2.3 3 4.5 8 --json out.json   # break-even
    PYTHONPATH=src python bench/tiny_branch.py --steps 600 --dim 128 --speedup 2.3 4.5 --json out.json   # width
    python bench/tiny_breakeven.py out.json   # the break-even speed-up read off the records
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import campaign
import torch
from leak_iid import add_model_options, build

from lighthouse.data.datamodule import LMDataModule
from lighthouse.eval.val_windows import read_windows, window_ids
from lighthouse.model.transformer import dense_eager
from lighthouse.train.lit_module import lr_multiplier
from lighthouse.train.schedule import Phase, lr_clock


def window_losses(model, windows: torch.Tensor) -> list[float]:
    """Each window's mean next-token loss with every layer dense."""
    with torch.no_grad(), dense_eager(model):
        return model.token_losses(windows).mean(dim=1).tolist()


def adamw(model, lr: float) -> torch.optim.AdamW:
    """branch_32k.yaml's optimizer settings."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)


class Trainer:
    """One arm's model and optimizer, stepped on a shared list of batches under one LR schedule."""

    def __init__(self, model, args: argparse.Namespace, total_steps: int):
        self.model, self.args, self.total_steps = model, args, total_steps
        self.optimizer = adamw(model, args.lr)
        self.seconds = {"sdpa": 0.0, "lighthouse": 0.0}
        self.phases: list[Phase] = []  # none: the LR schedule is read at the step itself
        self.end_step = total_steps

    def lr_factor(self, step: int) -> float:
        position = lr_clock(self.phases, step, self.total_steps, self.end_step)
        return lr_multiplier(position, self.args.lr_warmup, self.total_steps, "cosine", 0.1)

    def end_early(self, start: int, end: int) -> None:
        """From ``start`` on, fit the rest of the LR schedule into the steps until ``end`` (the E arm)."""
        self.phases = [Phase(0, "sdpa"), Phase(start, "sdpa", rescale_lr=True)] if start else [Phase(0, "sdpa", True)]
        self.end_step = end

    def train(self, batches: list[torch.Tensor], start: int, stop: int, sparse: bool) -> None:
        self.model.set_attention_backend("lighthouse_naive" if sparse else "sdpa")
        self.model.train()
        began = time.perf_counter()
        for step in range(start, stop):
            factor = self.lr_factor(step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.args.lr * factor
            loss = self.model.token_losses(batches[step]).mean()
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
        self.seconds["lighthouse" if sparse else "sdpa"] += time.perf_counter() - began

    def branch(self) -> Trainer:
        """A copy that continues from exactly this state (weights, optimizer moments, step times so far)."""
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        other.optimizer = adamw(other.model, self.args.lr)
        # load_state_dict keeps the very tensors it is given where dtype and device match, so without the copy every
        # arm would step the same Adam moments (and step count) in place: an arm would start from the moments the
        # arms before it left, not from the branch point's.
        other.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        other.seconds = dict(self.seconds)
        return other


def paired(base: list[float], arm: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-window differences arm - base."""
    differences = [b - a for a, b in zip(base, arm, strict=True)]
    return statistics.fmean(differences), statistics.stdev(differences) / math.sqrt(len(differences))


def equal_time_end(warmup: int, switch: int, total: int, speedup: float) -> int:
    """E's last step: W plus LH's arm after W counted in dense steps, its Lighthouse steps ``speedup`` times faster."""
    return warmup + round((switch - warmup) / speedup) + (total - switch)


def train_with_stops(
    trainer: Trainer, batches: list[torch.Tensor], start: int, stop: int, stops: set[int], val: torch.Tensor
) -> dict[int, float]:
    """Dense training from ``start`` to ``stop``, with the mean validation loss at each step of ``stops`` on the way
    (the evaluation changes nothing: no gradient, no randomness, the train mode kept)."""
    losses, step = {}, start
    for at in sorted(s for s in stops if start <= s <= stop):
        trainer.train(batches, step, at, sparse=False)
        losses[at], step = statistics.fmean(window_losses(trainer.model, val)), at
    trainer.train(batches, step, stop, sparse=False)
    return losses


def equal_time_arm(shared: Trainer, batches: list[torch.Tensor], warmup: int, switch: int, speedup: float) -> Trainer:
    """E for one speed-up: dense from the branch point W for the time LH's arm took, annealed at its last step."""
    equal = shared.branch()
    equal.end_early(warmup, equal_time_end(warmup, switch, shared.total_steps, speedup))
    equal.train(batches, warmup, equal.end_step, sparse=False)
    return equal


def run(args: argparse.Namespace, total: int, seed: int, datamodule: LMDataModule, val: torch.Tensor, save) -> dict:
    """One S and seed. ``save`` gets the record, marked ``"partial": True``, each time an arm is done (a run of hours
    that is cut off keeps what it finished), and once more, complete, at the end."""
    warmup = round(args.warmup_share * total)
    switches = [round(share * total) for share in args.share]
    if not all(0 <= warmup < switch < total for switch in switches):
        raise SystemExit(
            f"--warmup-share and --share give W={warmup}, switches {switches} at S={total}: need 0 <= W < switch < S"
        )
    torch.manual_seed(seed)
    stream = iter(datamodule.train_dataloader())
    batches = [next(stream)["tokens"] for _ in range(total)]
    model = build("lighthouse_naive", SimpleNamespace(**{**vars(args), "seed": seed, "vocab": datamodule.vocab_size}))
    shared = Trainer(model, args, total)
    shared.train(batches, 0, warmup, sparse=False)
    warmup_loss = statistics.fmean(window_losses(shared.model, val))
    dense = shared.branch()
    e_ends = {equal_time_end(warmup, switch, total, r) for switch in switches for r in args.speedup}
    d_at = train_with_stops(dense, batches, warmup, total, e_ends, val)
    d = window_losses(dense.model, val)
    result = {
        "steps": total,
        "seed": seed,
        "warmup": warmup,
        "warmup_loss": warmup_loss,
        "D": statistics.fmean(d),
        "seconds": {"D": dense.seconds},
        "arms": [],
        "partial": True,
    }
    save(result)
    print(f"S={total} seed {seed}: W={warmup}, warm-up {warmup_loss:.4f}; final D {result['D']:.4f}", flush=True)
    for share, switch in zip(args.share, switches, strict=True):
        sparse = shared.branch()
        sparse.train(batches, warmup, switch, sparse=True)
        at_switch = statistics.fmean(window_losses(sparse.model, val))
        sparse.train(batches, switch, total, sparse=False)
        lh = window_losses(sparse.model, val)
        gap, se = paired(d, lh)
        arm = {"share": share, "switch": switch, "lh_at_switch": at_switch, "LH": statistics.fmean(lh)}
        arm.update(gap=gap, gap_se=se, seconds={"LH": sparse.seconds})
        line = f"  switch {switch}: LH at switch {at_switch:.4f}, final {arm['LH']:.4f}, LH - D {gap:+.4f} +- {se:.4f}"
        print(line, flush=True)
        arm["equal_time"] = []
        result["arms"].append(arm)
        save(result)
        for speedup in args.speedup:
            equal = equal_time_arm(shared, batches, warmup, switch, speedup)
            e = window_losses(equal.model, val)
            lh_e, lh_e_se = paired(e, lh)
            record = {
                "speedup": speedup,
                "e_end": equal.end_step,
                "E": statistics.fmean(e),
                "d_at_e_end": d_at[equal.end_step],
                "lh_minus_e": lh_e,
                "lh_minus_e_se": lh_e_se,
                "seconds": equal.seconds,
            }
            arm["equal_time"].append(record)
            save(result)
            offset = record["E"] - record["d_at_e_end"]
            ends = f"E ({equal.end_step} steps) {record['E']:.4f} (E - D there {offset:+.4f})"
            ends += f", LH - E {lh_e:+.4f} +- {lh_e_se:.4f}"
            print(f"    speed-up {speedup}: {ends}", flush=True)
    del result["partial"]
    save(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[300, 600, 1200], help="total lengths S")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--warmup-share",
        type=float,
        default=0.25,
        help="W / S (the GPU design: 200 / 800); 0: both arms from the same init (the from-scratch design)",
    )
    parser.add_argument(
        "--share", type=float, nargs="+", default=[0.625], help="switch / S, one LH arm each (GPU: 500 / 800)"
    )
    parser.add_argument(
        "--speedup",
        type=float,
        nargs="+",
        default=[],
        help="one equal-time arm E for each, a Lighthouse step taken as this many times faster than a dense one (>= 1)",
    )
    add_model_options(parser)
    parser.add_argument(
        "--causal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the strictly causal selection (default; the paper's leaks at this size: leak_text.py)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-windows", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--lr-warmup", type=int, default=20, help="LR warm-up steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here (rewritten after each run)")
    args = parser.parse_args()
    for speedup in args.speedup:
        if not speedup >= 1:
            parser.error(f"--speedup {speedup}: a Lighthouse step's speed over a dense one, >= 1")
    torch.set_num_threads(args.threads)
    results = []
    for seed in args.seeds:
        datamodule = LMDataModule(
            corpus="stdlib",
            tokenizer="byte",
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            seed=seed,
            num_workers=0,
        )
        datamodule.setup("fit")
        val = read_windows(datamodule, window_ids(datamodule, args.val_windows), "val")  # the same in every seed
        for total in args.steps:
            results.append(run(args, total, seed, datamodule, val, save=functools.partial(write_json, args, results)))


def write_json(args: argparse.Namespace, done: list[dict], record: dict) -> None:
    """The finished records and the one in progress, to ``--json`` (if given): a cut-off run keeps its finished arms
    (campaign.write_json: through a temporary file, so a kill during the write leaves the previous record whole)."""
    if args.json:
        campaign.write_json(Path(args.json), {"args": vars(args), "results": [*done, record]})


if __name__ == "__main__":
    main()
