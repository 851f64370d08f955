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

from lighthouse.checkpoint.files import describe_last_good


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


class StepGuard:
    """Stops training before an optimizer step whose loss or gradients hold a NaN or inf.

    ``observe`` every micro-batch loss (no sync), then ``check`` once per optimizer step with the gradient norm.
    """

    def __init__(self) -> None:
        self._finite: Tensor | None = None
        self._loss: Tensor | None = None

    def observe(self, loss: Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self._finite = finite if self._finite is None else self._finite & finite
        self._loss = loss.detach()

    def check(self, trainer: L.Trainer, norm: Tensor | None) -> None:
        finite_loss = self._finite if self._finite is not None else torch.tensor(True)
        self._finite = None
        ok = finite_loss.to(trainer.strategy.root_device)
        if norm is not None:
            ok = ok & torch.isfinite(norm)
        if not _any_rank(trainer, ~ok):
            return
        step = trainer.global_step
        if not bool(finite_loss):
            what = f"training loss is {self._loss.item()} at global step {step}"
        elif norm is not None and not bool(torch.isfinite(norm)):
            what = f"gradient norm is {norm.item()} at global step {step} (the loss {self._loss.item():.4g} is finite)"
        else:
            what = f"the loss or gradient norm is not finite on another rank at global step {step}"
        last = describe_last_good(_folder(trainer))
        raise NonFiniteError(
            f"{what}: stopping before the optimizer step, so the weights are those of step {step}. "
            f"Last good checkpoint: {last}. Lower the LR or check the data, then resume with --ckpt_path."
        )


class FiniteCheckpoints(Callback):
    """Refuses to write a checkpoint whose weights or optimizer state hold a NaN or inf, and stops the run.

    Runs inside every save (periodic, last, on SIGTERM, at the end) on every rank, before anything is written.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        names = non_finite_names(checkpoint_state(checkpoint))
        if not _any_rank(trainer, bool(names)):
            return
        where = ", ".join(names) if names else "tensors held by another rank"
        raise NonFiniteError(
            f"refusing to save a checkpoint at global step {trainer.global_step}: non-finite values in {where}. "
            f"Training stops here. Last good checkpoint: {describe_last_good(_folder(trainer))}. "
            "Lower the LR or check the data, then resume with --ckpt_path."
        )
