"""Non-finite values never reach a checkpoint: a per-step loss and gradient-norm check, and a check before every save.

The step check costs one host sync per optimizer step (the progress bar already reads the loss every step, so on a
GPU it adds nothing measurable; ``bench/guard_cost.py`` measures it). It stops before the optimizer step, while the
weights are still those of the last completed step. It cannot see a finite gradient whose update overflows, or
memory corrupted outside the step; the save check catches those, so no file ever holds a NaN or an inf.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lighthouse.checkpoint.files import candidates, describe_last_good, verify


class NonFiniteError(FloatingPointError):
    """Training stopped on a NaN or inf; no checkpoint was written with it."""


def _local_parts(t: Tensor) -> list[Tensor]:
    """The parts of a tensor this rank holds: its local shards (ShardedTensor, DTensor of sharded state dicts)."""
    if hasattr(t, "local_shards"):
        return [shard.tensor for shard in t.local_shards()]
    if hasattr(t, "to_local"):
        return [t.to_local()]
    return [t]


def float_tensors(tree, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """(dotted name, tensor) for every floating-point tensor (this rank's part of it) in nested dicts/lists."""
    if isinstance(tree, Tensor):
        for part in _local_parts(tree):
            if part.is_floating_point() or part.is_complex():
                yield prefix, part
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from float_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from float_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def non_finite_names(tree, limit: int = 5) -> list[str]:
    """Names of (up to ``limit``) tensors in ``tree`` holding a NaN or inf; one host sync when all are finite."""
    named = [(name, t) for name, t in float_tensors(tree) if t.numel()]
    if not named:
        return []
    # Flags gather on the accelerator (optimizer step counters live on the CPU): a copy to it does not wait.
    device = next((t.device for _, t in named if t.device.type != "cpu"), torch.device("cpu"))
    flags = torch.stack([torch.isfinite(t).all().to(device) for _, t in named])
    if bool(flags.all()):
        return []
    return [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok][:limit]


def checkpoint_state(checkpoint: dict) -> dict:
    """The parts of a checkpoint that training continues from: weights and optimizer state."""
    return {key: checkpoint[key] for key in ("state_dict", "optimizer_states") if key in checkpoint}


def _any_rank(trainer: L.Trainer, bad: Tensor | bool) -> bool:
    """True on every rank when ``bad`` is true on any: every rank must stop together, or the healthy ones would
    wait forever in the next collective. One host sync."""
    flag = torch.as_tensor(bad, dtype=torch.float32, device=trainer.strategy.root_device)
    return bool(trainer.strategy.reduce(flag, reduce_op="sum") > 0)


def _folder(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    return getattr(callback, "dirpath", None)


def grad_norm(module: L.LightningModule, optimizer, clip_val: float | None, algorithm) -> Tensor | None:
    """Clip gradients as the trainer is configured and return their total norm before clipping (a 0-dim tensor,
    no host sync). Clipping by norm computes it anyway; otherwise it costs one pass over the gradients.

    None under a GradScaler (fp16): an inf gradient is routine there, the scaler skips that step and lowers its
    scale, so Lightning clips as usual and only the loss is checked.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    trainer = module.trainer
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        module.clip_gradients(optimizer, clip_val, algorithm)
        return None
    by_norm = bool(clip_val) and algorithm in (None, "norm")
    root = trainer.strategy.model
    if isinstance(root, FullyShardedDataParallel):
        # Lightning cannot clip by norm under FSDP; the root unit computes the norm over all shards. An infinite
        # limit measures without clipping.
        norm = root.clip_grad_norm_(clip_val if by_norm else float("inf"))
    else:
        params = list(trainer.precision_plugin.main_params(optimizer))
        if by_norm:
            norm = torch.nn.utils.clip_grad_norm_(params, clip_val)  # the very call of Lightning's own clipping
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if clip_val and not by_norm:
        module.clip_gradients(optimizer, clip_val, algorithm)
    return norm


DIVERGENCE_FACTOR = 10.0
"""Default of ``model.divergence_factor``: how far above its reference a loss, gradient norm or weight norm may go."""
WARMUP_STEPS = 10  # steps before the medians are trusted; until then the loss is compared with ln(vocab)
WINDOW = 64  # steps in the rolling medians
LOSS_FLOOR = 0.1  # nats: a memorised batch at 0.01 that rises to 0.2 is noise, not a blow-up
NORM_STRIKES = 3  # consecutive steps over the limit before a gradient norm counts as a climb, not a spike


class DivergenceError(NonFiniteError):
    """Training stopped on a finite blow-up: a loss, gradient norm or weight norm far above its recent level."""


def saved_step(path) -> int | None:
    """The global step a checkpoint file holds (mapped, not read: the weights stay on disk); None if unreadable."""
    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")
    except Exception:
        return None
    return step if isinstance(step, int) else None


def last_good_before(folder: str | None, step: int | None) -> str:
    """For divergence messages: the newest checkpoint that verifies and holds global step <= ``step`` (the last
    step before the trouble began), or why there is none. ``step`` None: the newest that verifies."""
    if folder is None or step is None:
        return describe_last_good(folder)
    for path in candidates(folder):
        found = saved_step(path) if verify(path).usable else None
        if found is not None and found <= step:
            return f"{path} (step {found})"
    return f"none saved at step {step} or earlier: start again with a lower LR"


class StepGuard:
    """Stops training before an optimizer step whose loss or gradients hold a NaN or inf, or whose loss or
    gradient norm is ``factor`` times its recent level (a finite blow-up: the weights are already on their way to
    inf, and every checkpoint saved from here on holds them).

    ``observe`` every micro-batch loss (no sync), then ``check`` once per optimizer step with the gradient norm.
    The reference is the median over the last WINDOW steps; during the first WARMUP_STEPS steps, for the loss
    only, ln(vocab), the loss of a uniform guess that no healthy model exceeds tenfold. The gradient norm is first
    compared once WINDOW steps are seen (early spikes are transient), and stops training only after NORM_STRIKES
    steps over the limit in a row: one step's spike is what gradient clipping exists for, a climb persists. A change
    of attention inside the run starts the references afresh (``restart``), as a new launch would. Everything is kept
    and compared on the device, so the check adds no host sync to the one the non-finite check already costs.
    """

    def __init__(self, factor: float | None = DIVERGENCE_FACTOR, uniform_loss: float | None = None) -> None:
        if factor is not None and not factor > 1:
            raise ValueError(f"model.divergence_factor={factor} must be > 1, or null to turn the check off")
        self.factor, self.uniform_loss = factor, uniform_loss
        self._finite: Tensor | None = None
        self._loss: Tensor | None = None
        self._sum: Tensor | None = None
        self._count = 0
        self._history: Tensor | None = None  # [WINDOW, 2]: (mean loss, gradient norm) per step, a ring
        self._steps: list[int] = []  # the global step of each ring row, oldest first
        self._seen = 0
        self._norm_strikes: Tensor | None = None  # consecutive steps whose gradient norm was over the limit

    def observe(self, loss: Tensor) -> None:
        loss = loss.detach()
        finite = torch.isfinite(loss)
        self._finite = finite if self._finite is None else self._finite & finite
        self._loss = loss
        self._sum = loss.float() if self._sum is None else self._sum + loss.float()
        self._count += 1

    def _references(self, device) -> Tensor:
        """(loss, norm) levels a step is compared with; NaN where there is none yet (NaN compares false)."""
        if self._seen < WARMUP_STEPS:
            loss = self.uniform_loss if self.uniform_loss is not None else float("nan")
            return torch.tensor([loss, float("nan")], device=device)
        rows = self._history if self._seen >= WINDOW else self._history[: self._seen]
        # The lower median as a quantile: nanmedian(dim) also returns indices, which have no deterministic CUDA
        # kernel, so it raised under --trainer.deterministic true (H200, 2026-12-03); the value is the same.
        reference = torch.nanquantile(rows, 0.5, dim=0, interpolation="lower")
        # The gradient norm only against a full window: over the first few dozen steps it jumps by 100x and falls
        # back on its own (seed 1 of the branch comparison, H200, 2026-12-02: 27 at step 5, 1.9 at 10, 378 at 15,
        # 2.6 at 20, then a normal run), so a median of a dozen early steps is no reference for it. A real blow-up
        # there still shows in the loss (checked from step WARMUP_STEPS) and ends in a non-finite value.
        norm = reference[1] if self._seen >= WINDOW else torch.full_like(reference[1], float("nan"))
        return torch.stack([reference[0].clamp(min=LOSS_FLOOR), norm])

    @property
    def steps_seen(self) -> int:
        """Steps recorded since the start of the run or the last ``restart``: how much history the references have."""
        return self._seen

    def restart(self) -> None:
        """Forget the reference levels: the steps that follow are judged as those of a fresh run. Called when the
        attention changes inside a run (the stage switch), where the loss and gradient norm move to new levels
        in one step: from-scratch seed 0 of the branch comparison (H200, 2026-12-03) went from a gradient norm of
        0.38 to 7.3 at the switch from Lighthouse to dense at step 500, 19x its median, and this guard stopped the
        run before its first dense step. A recovery started with its own config (``--ckpt_path``) gets a fresh
        guard the same way; a blow-up after the switch still shows in the loss and ends in a non-finite value."""
        self._history, self._steps, self._seen, self._norm_strikes = None, [], 0, None

    def _record(self, values: Tensor, step: int) -> None:
        if self._history is None:
            self._history = torch.full((WINDOW, 2), float("nan"), device=values.device)
        self._history[self._seen % WINDOW] = values
        self._steps = [*self._steps[-(WINDOW - 1) :], step]
        self._seen += 1

    def check(self, trainer: L.Trainer, norm: Tensor | None) -> None:
        device = trainer.strategy.root_device
        finite_loss = self._finite if self._finite is not None else torch.tensor(True)
        ok = finite_loss.to(device)
        if norm is not None:
            ok = ok & torch.isfinite(norm)
        blown = values = reference = None
        if self.factor is not None and self._sum is not None:
            nan = torch.tensor(float("nan"), device=device)
            mean = (self._sum / self._count).to(device)
            values = torch.stack([mean, norm.detach().float().to(device) if norm is not None else nan])
            reference = self._references(device)
            over = values > self.factor * reference  # [2]: loss, norm
            # A lone gradient norm spike passes: causal-selection seed 0 of the from-scratch comparison (H200,
            # 2026-12-03) had one step at 7.1, 11x its median of 0.64, at step 255, with a flat loss (2.2-2.4) and
            # gradients clipped to 1.0; the guard stopped that run there.
            strikes = over[1].long() if self._norm_strikes is None else (self._norm_strikes + 1) * over[1]
            self._norm_strikes = strikes
            blown = torch.stack([over[0], strikes >= NORM_STRIKES])
            ok = ok & ~blown.any()
            self._record(values, trainer.global_step)
        self._finite, self._sum, self._count = None, None, 0
        if not _any_rank(trainer, ~ok):
            return
        step = trainer.global_step
        if not bool(finite_loss):
            what = f"training loss is {self._loss.item()} at global step {step}"
        elif norm is not None and not bool(torch.isfinite(norm)):
            what = f"gradient norm is {norm.item()} at global step {step} (the loss {self._loss.item():.4g} is finite)"
        elif blown is not None and bool(blown.any()):
            flags = blown.tolist()
            raise DivergenceError(self._blow_up_message(trainer, values.tolist(), reference.tolist(), flags, step))
        else:
            what = f"the loss or gradient norm is not finite or blew up on another rank at global step {step}"
        last = describe_last_good(_folder(trainer))
        raise NonFiniteError(
            f"{what}: stopping before the optimizer step, so the weights are those of step {step}. "
            f"Last good checkpoint: {last}. Lower the LR or check the data, then resume with --ckpt_path."
        )

    def _trouble_began_after(self, reference: list[float]) -> int | None:
        """The last step before this one whose loss and gradient norm were at most their reference: where the climb
        to the blow-up started. None when every step in the window was above it."""
        rows = self._history.tolist()
        order = [(self._seen - 1 - back) % WINDOW for back in range(len(self._steps))]  # newest first
        for row, step in zip(order[1:], reversed(self._steps[:-1]), strict=True):
            loss, norm = rows[row]
            if not loss > reference[0] and not norm > reference[1]:  # NaN (no reference, no norm) counts as at most
                return step
        return None

    def _blow_up_message(
        self, trainer: L.Trainer, values: list[float], reference: list[float], blown: list[bool], step: int
    ) -> str:
        warm = self._seen > WARMUP_STEPS
        levels = (
            f"its median over the last {min(self._seen - 1, WINDOW)} steps" if warm else "ln(vocab), a uniform guess",
            "its median",
        )
        names = ("training loss", "gradient norm")
        runs = ("", f" (over the limit {NORM_STRIKES} steps in a row)")
        parts = [
            f"{name} {value:.4g} is {value / ref:.3g}x {level} ({ref:.4g}){run}"
            for name, value, ref, level, run, flag in zip(names, values, reference, levels, runs, blown, strict=True)
            if flag
        ]
        began = self._trouble_began_after(reference)
        since = f"the climb began after step {began}" if began is not None else "it was climbing for the whole window"
        return (
            f"{' and '.join(parts)} at global step {step}, over the limit model.divergence_factor={self.factor}: the "
            f"weights are diverging (finite, but not good). Stopping before the optimizer step; {since}. Last good "
            f"checkpoint (saved before the trouble): {last_good_before(_folder(trainer), began)}. Lower the LR or "
            "check the data, then resume from it with --ckpt_path."
        )


def weight_norm(state: dict, trainer: L.Trainer) -> Tensor:
    """The 2-norm of every floating tensor in ``state``, summed over ranks (this rank's parts only). One sync."""
    parts = [t.detach().float().pow(2).sum() for _, t in float_tensors(state) if t.numel()]
    device = trainer.strategy.root_device
    total = torch.stack([p.to(device) for p in parts]).sum() if parts else torch.zeros((), device=device)
    return trainer.strategy.reduce(total, reduce_op="sum").sqrt()


class FiniteCheckpoints(Callback):
    """Refuses to write a checkpoint whose weights or optimizer state hold a NaN or inf, or whose weight norm
    jumped ``model.divergence_factor`` times above the norm at the previous save (or at the start of training):
    finite weights that are no longer good. Either stops the run.

    Runs inside every save (periodic, last, on SIGTERM, at the end) on every rank, before anything is written.
    """

    def __init__(self) -> None:
        self._norm: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._norm = float(weight_norm(pl_module.state_dict(), trainer))  # once per launch

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        names = non_finite_names(checkpoint_state(checkpoint))
        if _any_rank(trainer, bool(names)):
            where = ", ".join(names) if names else "tensors held by another rank"
            raise NonFiniteError(
                f"refusing to save a checkpoint at global step {trainer.global_step}: non-finite values in {where}. "
                f"Training stops here. Last good checkpoint: {describe_last_good(_folder(trainer))}. "
                "Lower the LR or check the data, then resume with --ckpt_path."
            )
        factor = getattr(getattr(pl_module, "step_guard", None), "factor", DIVERGENCE_FACTOR)
        if factor is None or "state_dict" not in checkpoint:
            return
        norm = float(weight_norm(checkpoint["state_dict"], trainer))
        if self._norm is not None and self._norm > 0 and norm > factor * self._norm:
            raise DivergenceError(
                f"refusing to save a checkpoint at global step {trainer.global_step}: the weight norm jumped from "
                f"{self._norm:.4g} to {norm:.4g} ({norm / self._norm:.3g}x, over model.divergence_factor={factor}): "
                f"the weights are diverging. Training stops here. Last good checkpoint: "
                f"{describe_last_good(_folder(trainer))}. Lower the LR or check the data, then resume with --ckpt_path."
            )
        self._norm = norm
