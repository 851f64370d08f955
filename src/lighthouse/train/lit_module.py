"""LightningModule around the decoder LM: next-token loss, validation metrics, optimizer and LR schedule."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torchmetrics import MeanMetric

from lighthouse.checkpoint.guards import DIVERGENCE_FACTOR, StepGuard, grad_norm
from lighthouse.checkpoint.read import canonical_name, load_module_dense
from lighthouse.checkpoint.records import model_config_from, write_records
from lighthouse.checkpoint.resume import refuse_shape_changes, saved_model_fields
from lighthouse.eval.passkey import PasskeyEval, split_reader
from lighthouse.eval.passkey_prompts import PasskeyConfig
from lighthouse.eval.positions import bucket_name, position_buckets
from lighthouse.eval.recall import RecallConfig, RecallEval
from lighthouse.hf_import import transformer_from
from lighthouse.model.config import ModelConfig
from lighthouse.model.context_parallel import without_context_parallel
from lighthouse.model.transformer import dense_eager
from lighthouse.train.logger import log_step, validated_step, write_steps_note

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """LR factor at ``step``: linear warm-up, then constant, cosine or linear decay to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1 - (1 - min_ratio) * progress


class LitLM(L.LightningModule):
    def __init__(
        self,
        arch: ModelConfig,
        optimizer: OptimizerFactory | None = None,
        warmup_steps: int = 100,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        schedule_steps: int | None = None,
        compile: bool = False,
        passkey: PasskeyConfig | None = None,
        dense_validation: bool = True,
        recall: RecallConfig | None = None,
        init_from: str | None = None,
        divergence_factor: float | None = DIVERGENCE_FACTOR,
    ):
        """
        Args:
            arch: Model architecture and attention backend.
            optimizer: Optimizer class and arguments (``class_path``/``init_args``); None means AdamW with the
                paper's settings (lr 2e-3, betas 0.9/0.95, weight decay 0.1). Weight decay applies to
                matrices only.
            warmup_steps: Linear LR warm-up steps (>= 0).
            lr_schedule: LR after warm-up: 'constant', 'cosine' or 'linear' (decaying to min_lr_ratio at max_steps).
            min_lr_ratio: Final LR as a fraction of the peak LR, in [0, 1].
            schedule_steps: Length of the LR schedule in optimizer steps; None means trainer.max_steps. Set it
                to the total of both stages so a two-job run (stage 1, then recovery) follows one schedule.
            compile: torch.compile every transformer block (the Lighthouse ops are custom ops, no graph breaks).
            passkey: Passkey retrieval test at every validation, with dense attention, filler from the
                validation split (``val/passkey_acc``, ``val/passkey_digit_acc``, per length and cell); None
                turns it off, ``{}`` runs the default grid (see lighthouse/eval/passkey.py).
            dense_validation: While Lighthouse layers are active, also compute every validation loss with all
                layers dense (``val/loss_dense``, the number to compare runs on). Off where dense attention at the
                context length is too slow (at 1M tokens a dense forward takes minutes).
            recall: Multi-query key-value recall at every validation, dense, on fixed validation windows with
                evaluation keys (``recall/<bin>/digit_acc``, ``.../exact``, ``.../digit_logloss`` per key-to-query
                distance bin); None turns it off, ``{}`` runs the defaults (see lighthouse/eval/recall.py).
            init_from: A Hugging Face Llama folder (``save_pretrained``: config.json + safetensors) whose weights
                start this run, with fresh optimizer and schedule; arch sizes left null take its values, and a
                given rope_theta / rope_scaling extends its context (lighthouse/hf_import.py). Not saved with
                the checkpoints, which hold the imported config and weights.
            divergence_factor: Stop training (exit 1, naming the newest checkpoint saved before the trouble) when the
                loss of a step, or the gradient norm of 3 steps in a row, exceeds this many times its median over the
                last 64 steps (during the first 10 steps: the loss ln(vocab) of a uniform guess; the gradient norm
                from the 65th step on, early and lone spikes being transient; a change of attention at a stage switch
                starts these counts again), or the weight norm at a save this many
                times the norm at the previous save: a finite blow-up (lighthouse/checkpoint/guards.py). > 1; null
                turns these checks off (NaN and inf always stop the run).
        """
        super().__init__()
        if isinstance(arch, dict):  # the hyperparameters stored in a checkpoint
            arch = model_config_from(arch)
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps={warmup_steps} must be >= 0")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"model.lr_schedule={lr_schedule!r} is not one of {LR_SCHEDULES}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.min_lr_ratio={min_lr_ratio} must lie in [0, 1]")
        if schedule_steps is not None and schedule_steps < 1:
            raise ValueError(f"model.schedule_steps={schedule_steps} must be >= 1 or null")
        if isinstance(passkey, dict):
            passkey = PasskeyConfig(**passkey)
        if passkey is not None:
            passkey.validate(arch.seq_len)
        if isinstance(recall, dict):
            recall = RecallConfig(**recall)
        if recall is not None:
            recall.validate(arch.seq_len)
        self.model = transformer_from(arch, init_from)
        self.config = arch = self.model.config  # with init_from: the checkpoint's sizes
        self.optimizer_factory = optimizer
        self.warmup_steps, self.lr_schedule, self.min_lr_ratio = warmup_steps, lr_schedule, min_lr_ratio
        self.schedule_steps = schedule_steps
        # Plain dicts only: checkpoints then load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "arch": dataclasses.asdict(arch),
                "warmup_steps": warmup_steps,
                "lr_schedule": lr_schedule,
                "min_lr_ratio": min_lr_ratio,
                "schedule_steps": schedule_steps,
                "passkey": None if passkey is None else dataclasses.asdict(passkey),
                "dense_validation": dense_validation,
                "recall": None if recall is None else dataclasses.asdict(recall),
            }
        )
        self.dense_validation = dense_validation
        # Read off the eager model now; FSDP later flattens and shards the parameters (see parameter_groups).
        self.no_decay_names = frozenset(name for name, p in self.model.named_parameters() if p.dim() < 2)
        if compile:
            self.model.compile_blocks()
        self.step_guard = StepGuard(divergence_factor, uniform_loss=math.log(arch.vocab_size))
        self.val_loss = MeanMetric()
        self.buckets = position_buckets(arch.seq_len)
        self.val_loss_by_pos = torch.nn.ModuleList(MeanMetric() for _ in self.buckets)
        # The same weights with every layer dense (val/loss runs the model as it trains).
        self.val_loss_dense = MeanMetric()
        self.val_loss_dense_by_pos = torch.nn.ModuleList(MeanMetric() for _ in self.buckets)
        self.passkey_config = passkey
        self._passkey_eval: PasskeyEval | None = None  # built at the first validation, from the data module
        self.recall_config = recall
        self._recall_eval: RecallEval | None = None  # likewise
        # Where the LR schedule stands at a global step: the step itself unless a phase rescales the rest of the
        # schedule (set by the StageSwitch callback; lighthouse.train.schedule.lr_clock).
        self.lr_clock: Callable[[int, int, int | None], float] = lambda step, total, end: float(step)

    # ---- stages -------------------------------------------------------------------------------------------
    def set_attention_backend(self, name: str) -> None:
        """Used by the stage callback: 'sdpa' for recovery, a Lighthouse backend for stage 1."""
        self.model.set_attention_backend(name)

    # ---- steps --------------------------------------------------------------------------------------------
    def token_losses(self, tokens: Tensor) -> Tensor:
        """Per-token next-token cross-entropy ``[B, N]`` for a window ``tokens`` ``[B, N + 1]``; with context
        parallelism (lighthouse.model.context_parallel), ``[B, N/cp]``: the losses of this rank's slice of the
        window."""
        return self.model.token_losses(tokens)

    def window_losses(self, tokens: Tensor) -> Tensor:
        """``[B, N]`` losses of the whole window on every rank, also with context parallelism (no gradient)."""
        losses = self.token_losses(tokens)
        cp = self.model.context_parallel
        return losses if cp is None else cp.gather_sequence(losses)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # With context parallelism the mean of this rank's slice: slices are equal, so the gradient averaged over
        # all ranks (DDP) is the gradient of the mean over every token of the global batch.
        loss = self.token_losses(batch["tokens"]).mean()
        self.step_guard.observe(loss)  # checked with the gradient norm before the optimizer step
        # sync_dist: the curve is the loss of the global batch, comparable across world sizes.
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        log_step(self, self.global_step + 1)  # this batch makes optimizer step global_step + 1 (logger.py)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        tokens = batch["tokens"]
        # Eager: a handful of forwards per validation would not repay compiling a no-grad variant of the blocks.
        with torch.compiler.set_stance("force_eager"):
            losses = self.window_losses(tokens)
        if self.model.attention_backends == ["sdpa"] * self.config.n_layers:
            dense = losses  # already the dense model: the same number, not computed twice
        elif not self.dense_validation:
            dense = None
        else:
            # Lighthouse selection inside a tile sees later tokens of the tile (op README, causality), which
            # lowers val/loss; the dense loss of the same weights is the number to compare runs on.
            with dense_eager(self.model):
                dense = self.window_losses(tokens)
        for total, by_pos, values in (
            (self.val_loss, self.val_loss_by_pos, losses),
            (self.val_loss_dense, self.val_loss_dense_by_pos, dense),
        ):
            if values is None:
                continue
            total.update(values)
            for (lo, hi), metric in zip(self.buckets, by_pos, strict=True):
                if lo < values.shape[1]:
                    metric.update(values[:, lo:hi])

    def on_train_start(self) -> None:
        write_steps_note(self.trainer)
        if self.recall_config is not None:
            # Its windows now, not at the first validation after training steps: whether model.recall.pairs fit a
            # window depends on the tokenizer's lines, so this is the first point where a setting that cannot be
            # held fails, before any step.
            try:
                self.recall_eval()
            except ValueError as err:
                raise ValueError(f"model.recall.pairs={self.recall_config.pairs}: {err}") from None

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == TrainerFn.VALIDATING:  # `validate` on its own (inside fit: on_train_start)
            write_steps_note(self.trainer)

    def on_validation_epoch_end(self) -> None:
        log_step(self, validated_step(self.trainer))  # the weights after that many optimizer steps (logger.py)
        loss = self.val_loss.compute()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", loss.exp(), sync_dist=False)
        if self.val_loss_dense.update_called:
            self.log("val/loss_dense", self.val_loss_dense.compute(), prog_bar=True, sync_dist=False)
        for metric in (self.val_loss, self.val_loss_dense):
            metric.reset()
        for name, by_pos in (
            ("val/loss_pos", self.val_loss_by_pos),
            ("val/loss_dense_pos", self.val_loss_dense_by_pos),
        ):
            for (lo, hi), metric in zip(self.buckets, by_pos, strict=True):
                if metric.update_called:
                    self.log(f"{name}/{bucket_name(lo, hi)}", metric.compute())
                metric.reset()
        if self.passkey_config is not None and not self.trainer.sanity_checking:
            self.log_dict(self.run_passkey().metrics("val/"), sync_dist=False)  # already summed over ranks
        if self.recall_config is not None and not self.trainer.sanity_checking:
            self.log_dict(self.run_recall().metrics("recall/"), sync_dist=False)  # already summed over ranks

    def run_passkey(self):
        """The passkey grid on the current weights, dense, prompts split over ranks and the counts summed."""
        if self._passkey_eval is None:
            self._passkey_eval = PasskeyEval(
                self.passkey_config, *self._validation_text("passkey"), self.config.seq_len
            )
        return self._score_over_ranks(self._passkey_eval)

    def run_recall(self):
        """The recall windows on the current weights, dense, windows split over ranks and the counts summed."""
        return self._score_over_ranks(self.recall_eval())

    def recall_eval(self) -> RecallEval:
        """The fixed recall windows, built once."""
        if self._recall_eval is None:
            self._recall_eval = RecallEval(self.recall_config, *self._validation_text("recall"), self.config.seq_len)
        return self._recall_eval

    def _validation_text(self, option: str):
        """(tokenizer, validation split reader) of the data module, which the ``model.<option>`` evaluation needs."""
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ValueError(f"model.{option} needs the data module (its tokenizer and validation split)")
        return datamodule.tokenizer, split_reader(datamodule, "val")

    def _score_over_ranks(self, evaluator):
        """``evaluator.score`` on the dense model, its items split over the ranks and the counts summed."""
        strategy = self.trainer.strategy
        return evaluator.score(
            self._dense_logits,
            self.device,
            self.global_rank,
            self.trainer.world_size,
            reduce_sum=lambda t: strategy.reduce(t, reduce_op="sum"),
        )

    def _dense_logits(self, inputs: Tensor) -> Tensor:
        # Passkey prompts and recall windows are split over all ranks, each scored whole on one rank: no context
        # parallelism here.
        with dense_eager(self.model), without_context_parallel(self.model):
            with self.trainer.precision_plugin.forward_context():
                return self.model(inputs)

    # ---- optimisation -------------------------------------------------------------------------------------
    def parameter_groups(self) -> tuple[list, list]:
        """(decayed, not decayed) parameters: weight decay for matrices and embeddings, not for norm gains.

        Decided by parameter name against the eager model, never by the runtime shape: under FSDP a parameter
        a rank does not own is an empty 1-D view, and a shape rule would split the groups differently on every
        rank and world size (and then sharded optimizer state could not be loaded on another world size).
        """
        decay, keep = [], []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (keep if canonical_name(name) in self.no_decay_names else decay).append(param)
        return decay, keep

    def configure_optimizers(self):
        decay, no_decay = self.parameter_groups()
        if self.optimizer_factory is None:
            groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
            optimizer = torch.optim.AdamW(groups, lr=2e-3, betas=(0.9, 0.95))
        else:
            optimizer = self.optimizer_factory([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        total = self.schedule_steps or self.trainer.max_steps
        if total is None or total < 1:
            total = int(self.trainer.estimated_stepping_batches)
        end = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None

        def multiplier(step: int) -> float:
            position = self.lr_clock(step, total, end)
            return lr_multiplier(position, self.warmup_steps, total, self.lr_schedule, self.min_lr_ratio)

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # The one point after backward and before the optimizer step: a NaN/inf loss or gradient stops the run
        # here, so it never reaches the weights or a checkpoint.
        norm = grad_norm(self, optimizer, gradient_clip_val, gradient_clip_algorithm)  # before clipping
        self.step_guard.check(self.trainer, norm)
        if norm is not None:  # the norm the guard and the clipping use anyway: logging it costs nothing more
            self.log("train/grad_norm", norm)

    # ---- checkpoints --------------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's ``load_from_checkpoint`` for every checkpoint this project writes: loaded with
        weights_only=True, the model config read from the checkpoint (also from checkpoints written before the
        ``model`` -> ``arch`` rename), a sharded FSDP folder refused with the command that consolidates it.

        The model is loaded for inference, so every layer runs dense SDPA, whatever phase the checkpoint was
        saved in: Lighthouse needs sequences of at least a few tiles, and a recovered model is a dense model.
        A checkpoint saved in a Lighthouse phase (not recovered) loads too, with a NotRecoveredWarning. To train
        on from a checkpoint, resume it (``--ckpt_path``): the schedule then sets the attention per phase.
        Keyword arguments override hyperparameters, as in Lightning.
        """
        return load_module_dense(
            super().load_from_checkpoint,
            checkpoint_path,
            map_location=map_location,
            hparams_file=hparams_file,
            strict=strict,
            **kwargs,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        write_records(checkpoint, self.config, getattr(self.trainer.datamodule, "tokenizer", None))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before the weights load, so a shape change is named instead of failing inside load_state_dict; the
        # other resume rules (lighthouse.checkpoint.resume.ResumeCheck) need the optimizer and the CLI's overrides.
        refuse_shape_changes(saved_model_fields(checkpoint), self.config)
