"""What may change when a run resumes: model fields refused or allowed, optimizer and LR schedule changes applied.

Every model field is in exactly one class (a test pins it, so a new field cannot slip through unclassified):
- SHAPE: changes parameter shapes; the checkpoint cannot load. Always refused.
- COMPUTE: same parameters, different function (norm_eps, rope_theta, rope_scaling): the trained weights would
  compute something else and the loss jumps. Refused unless named in ``--resume_overrides``.
- RECIPE: how the same function is computed or trained (attention backend, Lighthouse settings, dense layers,
  activation checkpointing and chunking, context length, init): recipes change these on purpose. Allowed.

Optimizer settings (lr, betas, weight_decay, eps, ...) and the LR schedule (warmup_steps, lr_schedule,
min_lr_ratio, schedule_steps) only shape the steps still to come, so the config wins: a changed value is applied
and announced, never ignored. (Lightning would restore the optimizer's saved hyperparameters over the config's.)
The moment estimates in the optimizer state are kept. A different optimizer class is refused.

The tokenizer (``data.tokenizer``) is refused when it differs, and before any data work (``refuse_tokenizer_change``):
a BPE would otherwise be trained and the corpus tokenized only for the restore to fail on the vocabulary size. So
are a fit's data seed and window length (``refuse_data_change``), which the data module would otherwise compare only
after tokenizing the corpus; the data itself (its fingerprint) needs the corpus read, and is compared there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lighthouse.checkpoint.records import TOKENIZER_KEY, saved_model_config
from lighthouse.data.tokenizer import TextTokenizer, TokenizerSpec, byte_tokenizer, parse_tokenizer_spec
from lighthouse.model.config import PREFIX, ModelConfig

SHAPE = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_hidden", "tie_embeddings")
COMPUTE = ("norm_eps", "rope_theta", "rope_scaling")
# checkpoint_dtype rounds the residual stream to bf16 between blocks: a precision choice like trainer.precision.
# flavor only fills sizes left unset; what it filled is compared field by field (SHAPE, COMPUTE, RECIPE).
RECIPE = (
    "attention",
    "dense_layers",
    "lighthouse",
    "activation_checkpointing",
    "checkpoint_dtype",
    "checkpoint_offload",
    "mlp_chunk_tokens",
    "loss_chunk_tokens",
    "seq_len",
    "init_std",
    "flavor",
)
SCHEDULE = ("warmup_steps", "lr_schedule", "min_lr_ratio", "schedule_steps")
# Optimizer param-group keys that are bookkeeping, not settings: the parameters, and the LR the scheduler owns.
_NOT_SETTINGS = ("params", "lr", "initial_lr")


def saved_model_fields(checkpoint: dict) -> dict:
    """The checkpoint's model config as a dict with sizes resolved (refused if the checkpoint has none)."""
    return dataclasses.asdict(saved_model_config(checkpoint))


def _changes(saved: dict, current: ModelConfig, fields: tuple[str, ...]) -> dict[str, tuple]:
    now = dataclasses.asdict(current)
    return {f: (saved.get(f), now[f]) for f in fields if f in saved and saved[f] != now[f]}


def _listing(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{PREFIX}{f}: checkpoint {a!r} vs config {b!r}" for f, (a, b) in changes.items())


def refuse_shape_changes(saved: dict, current: ModelConfig) -> None:
    changed = _changes(saved, current, SHAPE)
    if changed:
        raise ValueError(f"checkpoint does not fit this config (parameter shapes differ): {_listing(changed)}")


def override_names(value: str | list[str] | None) -> list[str]:
    """``--resume_overrides`` as given: ``norm_eps``, ``norm_eps,rope_theta`` or ``[norm_eps, rope_theta]``."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [item.strip() for item in items if item.strip()]


def check_override_names(names: list[str]) -> None:
    """``--resume_overrides`` may only name COMPUTE fields; anything else is a typo or cannot work."""
    for name in names:
        if name in SHAPE:
            raise ValueError(
                f"--resume_overrides {name}: {PREFIX}{name} changes parameter shapes, so a checkpoint "
                f"with another value cannot load at all"
            )
        if name not in COMPUTE:
            raise ValueError(
                f"--resume_overrides {name!r} is not a model field that resuming refuses; "
                f"the fields it may name are {list(COMPUTE)}"
            )


def refuse_compute_changes(saved: dict, current: ModelConfig, overrides: list[str]) -> None:
    changed = _changes(saved, current, COMPUTE)
    refused = {f: v for f, v in changed.items() if f not in overrides}
    if refused:
        names = ",".join(refused)
        raise ValueError(
            f"resuming would change what the trained weights compute: {_listing(refused)}. Keep the checkpoint's "
            f"values, or accept the change with --resume_overrides [{names}] (the loss will jump)"
        )
    for f, (a, b) in changed.items():
        rank_zero_warn(f"resume: {PREFIX}{f} {a!r} -> {b!r}, accepted by --resume_overrides")


def saved_tokenizer_identity(state: dict | None) -> tuple[str | None, str | None, int | None]:
    """The ``data.tokenizer`` a checkpoint was trained with, that tokenizer's fingerprint and the model's vocabulary
    size (each None where not recorded), from its metadata (``files.read_metadata``: the tensors memory-mapped, never
    touched). All None for a file that does not load (``state`` None): the restore says what is wrong with it."""
    if state is None:
        return None, None, None
    spec = (state.get("datamodule_hyper_parameters") or {}).get("tokenizer")
    fingerprint = (state.get("LMDataModule") or {}).get("tokenizer_fingerprint")
    if fingerprint is None and TOKENIZER_KEY in state:
        fingerprint = TextTokenizer.from_str(state[TOKENIZER_KEY]).fingerprint
    try:
        vocab_size = saved_model_config(state).vocab_size
    except (ValueError, TypeError):  # no model record: the restore names what is missing
        vocab_size = None
    return spec, fingerprint, vocab_size


def fingerprint_without_data(spec: str) -> str | None:
    """The fingerprint of the tokenizer ``spec`` names, where no data is needed to make it ('byte', a tokenizer
    .json, 'hf:DIR'); None for 'bpe:N', which is trained on the corpus (or found by the corpus's hash)."""
    try:
        if spec == "byte":
            return byte_tokenizer().fingerprint
        if spec.endswith(".json"):
            return TextTokenizer.from_file(spec).fingerprint
        if spec.startswith("hf:"):
            return TextTokenizer.from_hf_folder(spec[3:]).fingerprint
    except Exception:  # a file that does not load: DataSettings names it in its own words
        return None
    return None


def _named(spec: object) -> TokenizerSpec | None:
    """The parsed spec where ``spec`` is a valid 'byte' or 'bpe:N' (names that say which tokenizer they are), else
    None: paths say nothing about what they hold, and an invalid spec is DataSettings' to name."""
    if not isinstance(spec, str) or not (spec == "byte" or spec.startswith("bpe:")):
        return None
    try:
        return parse_tokenizer_spec(spec)
    except ValueError:
        return None


def _tokenizer_name(spec: str | None, fingerprint: str | None) -> str | None:
    """'byte' or 'bpe:N' for a checkpoint's tokenizer where that names it (a .json of the byte tokenizer is 'byte'
    too), else None."""
    if fingerprint is not None and fingerprint == byte_tokenizer().fingerprint:
        return "byte"
    return spec if _named(spec) else None


def refuse_tokenizer_change(ckpt_path: str | Path, asked: str, state: dict | None) -> None:
    """Refuse to load a checkpoint trained with another tokenizer than ``data.tokenizer`` (``asked``), before any
    data work: a BPE would be trained and the whole corpus tokenized, only for the restore to fail on
    model.arch.vocab_size (or, at an equal size, for the weights to read other token ids).

    Fingerprints decide where both are known, so a .json path or an 'hf:' folder holding the checkpoint's own
    tokenizer is accepted. A 'bpe:N' tokenizer has no fingerprint before the corpus is read: the spec strings are
    then compared, but only where both are 'byte' or 'bpe:N' (a path says nothing about which BPE it holds; the
    checkpoint's counts as 'byte' where its fingerprint is). A 'bpe:N' against any other checkpoint tokenizer is
    refused where N is not the checkpoint's vocabulary size (the restore could only fail); an equal size is left to
    the data module, which compares fingerprints when it sets up."""
    saved, saved_fingerprint, saved_vocab_size = saved_tokenizer_identity(state)
    asked_fingerprint = fingerprint_without_data(asked)
    if asked_fingerprint is not None and saved_fingerprint is not None:
        if asked_fingerprint == saved_fingerprint:
            return
        detail = f" (fingerprint {saved_fingerprint}; {asked!r} has {asked_fingerprint})"
    elif (named := _tokenizer_name(saved, saved_fingerprint)) and (asked_named := _named(asked)):
        if asked_named.spec == named:
            return
        detail = ""
    elif (asked_named := _named(asked)) and asked_named.kind == "bpe" and saved_vocab_size is not None:
        if asked_named.vocab_size == saved_vocab_size:
            return
        detail = f" ({saved_vocab_size} tokens; {asked!r} has {asked_named.vocab_size})"
    else:
        return
    trained_with, keep = (f"tokenizer {saved!r}", f"--data.tokenizer {saved}") if saved else ("another tokenizer", "it")
    raise ValueError(
        f"data.tokenizer={asked!r}, but the checkpoint {ckpt_path} was trained with {trained_with}{detail}: its "
        f"weights read other token ids. Pass {keep}; a model with another tokenizer is a new run (no --ckpt_path)"
    )


def refuse_foreign_checkpoint(ckpt_path: str | Path, state: dict | None) -> None:
    """Refuse a file that loads but is no Lightning checkpoint (a bare state dict, another tool's save), which
    Lightning's restore would meet with a KeyError deep inside; a file that does not load at all (``state`` None) is
    left to the restore, whose message says what is wrong with it."""
    if Path(ckpt_path).is_dir():  # a sharded (FSDP) checkpoint: its own checks say what is wrong with it
        return
    if state is not None and "pytorch-lightning_version" not in state:
        raise ValueError(
            f"--ckpt_path {ckpt_path} is not a Lightning checkpoint (it has no 'pytorch-lightning_version' entry): "
            "fit and validate load checkpoints a Lighthouse fit saved; to start from a Hugging Face model's "
            "weights, use --model.init_from FOLDER"
        )


# The data stream's settings a checkpoint records (LMDataModule.state_dict) that can be compared before any data is
# read; the data and tokenizer fingerprints need the corpus, and the data module compares them at setup.
STREAM = ("seed", "seq_len")


def refuse_data_change(ckpt_path: str | Path, data: dict, state: dict | None) -> None:
    """Refuse to resume a fit on another data seed or window length than the checkpoint's, before the corpus is
    tokenized (the data module would refuse the same after it). ``data.strict_resume: false`` lets both through, as
    it does there (the stream continues at the same window count)."""
    if data.get("strict_resume") is False:
        return
    saved = ((state or {}).get("LMDataModule")) or {}
    changed = [
        f"data.{k}={data[k]!r}, the checkpoint's {saved[k]!r}"
        for k in STREAM
        if saved.get(k) is not None and data.get(k) is not None and data[k] != saved[k]
    ]
    if changed:
        raise ValueError(
            f"resuming {ckpt_path} on a different data stream: {'; '.join(changed)}. Keep the checkpoint's values, "
            "or pass --data.strict_resume false to continue at the same stream position anyway"
        )


def _plain(value):
    """Comparable form of a setting: tensors as numbers, lists and tuples alike (betas come as either)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _settings(optimizer) -> list[dict]:
    """Each param group's settings, with the base LR (``initial_lr``, what the schedule scales) as ``lr``."""
    return [
        {k: v for k, v in group.items() if k not in _NOT_SETTINGS} | {"lr": group.get("initial_lr", group["lr"])}
        for group in optimizer.param_groups
    ]


def _lrs(trainer: L.Trainer) -> list[float]:
    return [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]


class ResumeCheck(Callback):
    """Refuses model changes that alter what the weights compute; applies changed optimizer and LR-schedule
    settings (announcing each) instead of letting the checkpoint's values win silently."""

    def __init__(self, overrides: list[str] | tuple[str, ...] = ()):
        check_override_names(list(overrides))
        self.overrides = list(overrides)
        self._configured: list[list[dict]] | None = None
        self._saved_schedule: dict | None = None
        self._resumed = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The optimizers exist (built from the config) and the checkpoint's state is not loaded into them yet.
        self._configured = [_settings(opt) for opt in trainer.optimizers]

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._resumed = True
        refuse_compute_changes(saved_model_fields(checkpoint), pl_module.config, self.overrides)
        hparams = checkpoint.get("hyper_parameters", {})
        self._saved_schedule = {k: hparams[k] for k in SCHEDULE if k in hparams}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning has now loaded the checkpoint's optimizer and scheduler state over the config's.
        if not self._resumed or self._configured is None:
            return
        notes = self._apply_optimizer_settings(trainer)
        now = {k: getattr(pl_module, k) for k in SCHEDULE}
        notes += [f"model.{k} {v!r} -> {now[k]!r}" for k, v in (self._saved_schedule or {}).items() if v != now[k]]
        before = _lrs(trainer)
        self._recompute_lr(trainer)  # what the scheduler computes anyway: bitwise the same when nothing changed
        after = _lrs(trainer)
        if before != after and not notes:
            notes.append("the schedule's length (model.schedule_steps is null, so it follows trainer.max_steps)")
        if notes:
            rank_zero_warn(
                "resume: the config changes " + "; ".join(notes) + f". Applied from step {trainer.global_step} on "
                f"(LR {before[0]:.6g} -> {after[0]:.6g}): optimizer and schedule settings only shape the steps still "
                "to come, so the config wins over the checkpoint; the optimizer's moment estimates are kept."
            )

    def _apply_optimizer_settings(self, trainer: L.Trainer) -> list[str]:
        notes = []
        for i, (optimizer, wanted) in enumerate(zip(trainer.optimizers, self._configured, strict=True)):
            loaded = _settings(optimizer)
            if [sorted(g) for g in loaded] != [sorted(g) for g in wanted]:
                raise ValueError(
                    f"the checkpoint's optimizer {i} has other settings ({sorted(loaded[0])}) than model.optimizer "
                    f"({type(optimizer).__name__}: {sorted(wanted[0])}): a different optimizer class cannot continue "
                    "its state. Resume with the optimizer it was trained with"
                )
            for group, old, new in zip(optimizer.param_groups, loaded, wanted, strict=True):
                for key, value in new.items():
                    if _plain(old[key]) != _plain(value):
                        notes.append(f"model.optimizer.init_args.{key} {old[key]!r} -> {value!r}")
                        # With a scheduler, initial_lr is the base it scales (the LR itself is recomputed below).
                        group["initial_lr" if key == "lr" and "initial_lr" in group else key] = value
        return list(dict.fromkeys(notes))

    @staticmethod
    def _recompute_lr(trainer: L.Trainer) -> None:
        """Set each group's LR to base LR x the (new) schedule at the resumed step, as the scheduler would."""
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            groups = scheduler.optimizer.param_groups
            scheduler.base_lrs = [group["initial_lr"] for group in groups]
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas is None:
                continue
            for group, base, fn in zip(groups, scheduler.base_lrs, lambdas, strict=True):
                group["lr"] = base * fn(scheduler.last_epoch)
            scheduler._last_lr = [group["lr"] for group in groups]
