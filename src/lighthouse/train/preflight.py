"""Checks on the parsed config before anything is built: what Lightning would only trip over later, or deep in
training with an unrelated error (``val_check_interval: 0`` was a ZeroDivisionError after the first step)."""

from __future__ import annotations

import math
import os
from numbers import Real

import torch

CUDA_ONLY_BACKENDS = ("lighthouse",)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_trainer_args(trainer) -> None:
    """Raise ValueError naming the trainer setting, its value and the valid range."""

    def fail(name: str, valid: str) -> None:
        raise ValueError(f"trainer.{name}={trainer.get(name)!r} is invalid: it must be {valid}")

    def integer(name: str, lowest: int, allow_none: bool = False, allow: tuple = ()) -> None:
        value = trainer.get(name)
        if (value is None and allow_none) or (value in allow and not isinstance(value, bool)):
            return
        if not _is_int(value) or value < lowest:
            fail(
                name,
                f"an integer >= {lowest}" + (" or null" if allow_none else "") + "".join(f" or {a}" for a in allow),
            )

    def count_or_fraction(name: str, lowest_int: int, fraction: str) -> None:
        """An int >= lowest_int (a count), a float in the given range (a fraction) or null; leaves other types
        (time intervals, strings) to Lightning."""
        value = trainer.get(name)
        if value is None or not _is_number(value):
            return
        if _is_int(value):
            if value < lowest_int:
                fail(name, f"an integer >= {lowest_int} (a count of batches) or a float in {fraction}")
        elif not (0.0 < value <= 1.0 if fraction == "(0, 1]" else 0.0 <= value <= 1.0):
            fail(name, f"a float in {fraction} (a fraction) or an integer >= {lowest_int}")

    integer("accumulate_grad_batches", 1)
    integer("max_steps", 1, allow=(-1,))
    integer("min_steps", 0, allow_none=True)
    integer("max_epochs", 0, allow_none=True, allow=(-1,))
    integer("min_epochs", 0, allow_none=True)
    integer("log_every_n_steps", 1, allow_none=True)
    integer("check_val_every_n_epoch", 1, allow_none=True)
    integer("num_sanity_val_steps", 0, allow_none=True, allow=(-1,))
    integer("num_nodes", 1, allow_none=True)
    count_or_fraction("val_check_interval", 1, "(0, 1]")
    for name in (
        "limit_train_batches",
        "limit_val_batches",
        "limit_test_batches",
        "limit_predict_batches",
        "overfit_batches",
    ):
        count_or_fraction(name, 0, "[0, 1]")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (not _is_number(clip) or clip < 0 or clip != clip):
        raise ValueError(f"trainer.gradient_clip_val={clip!r} is invalid: it must be >= 0 (or null for no clipping)")
    algorithm = trainer.get("gradient_clip_algorithm")
    if algorithm is not None and str(algorithm) not in ("norm", "value"):
        fail("gradient_clip_algorithm", "'norm', 'value' or null")


def accumulation_notes(trainer) -> list[str]:
    """What gradient accumulation changes unasked: Lightning's val_check_interval counts micro-batches, while
    max_steps, the checkpoints' every_n_train_steps and the LR schedule count optimizer steps, so a config written
    for one micro-batch per step validates accumulate_grad_batches times as often once accumulation is on."""
    accumulate, interval = trainer.get("accumulate_grad_batches"), trainer.get("val_check_interval")
    if not (_is_int(accumulate) and accumulate > 1 and _is_int(interval)):
        return []
    every = "optimizer step" if interval == accumulate else f"{interval / accumulate:g} optimizer steps"
    return [
        f"note: trainer.val_check_interval={interval} counts micro-batches, so with trainer.accumulate_grad_batches="
        f"{accumulate} validation runs every {every} (max_steps and checkpoint intervals count optimizer steps); "
        f"set trainer.val_check_interval={interval * accumulate} to validate every {interval} steps"
    ]


def check_run_has_an_end(trainer) -> None:
    """``fit`` must end somewhere: with trainer.max_steps -1 and neither max_epochs nor max_time, Lightning would run
    1000 epochs of a streamed corpus, and the LR schedule would have no last step to anneal to (a launch without
    --config did that: the default 268M-parameter model, ``step 1/?``, until memory ran out)."""
    endless_epochs = trainer.get("max_epochs") is None or trainer.get("max_epochs") == -1
    if trainer.get("max_steps") == -1 and endless_epochs and trainer.get("max_time") is None:
        raise ValueError(
            "trainer.max_steps=-1 (no limit) is invalid for fit without trainer.max_epochs or trainer.max_time: "
            "the run would never end. Set trainer.max_steps to an integer >= 1 (the LR schedule anneals to it), "
            "e.g. with --config configs/demo.yaml"
        )


# What a torch optimizer's usual arguments must be; torch refuses the same values only once the model exists.
OPTIMIZER_ARGS = {
    "lr": (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
    "weight_decay": (lambda v: 0.0 <= v < math.inf, "a finite number >= 0"),
    "eps": (lambda v: 0.0 < v < math.inf, "a finite number > 0"),
    "momentum": (lambda v: 0.0 <= v < math.inf, "a finite number >= 0"),
}


def check_optimizer_args(model) -> None:
    """Raise ValueError naming model.optimizer.init_args.<name>, its value and the valid range."""
    optimizer = model.get("optimizer") if hasattr(model, "get") else None
    init_args = optimizer.get("init_args") if hasattr(optimizer, "get") else None
    if not init_args:
        return
    for name, (valid, text) in OPTIMIZER_ARGS.items():
        value = init_args.get(name)
        if value is not None and not (_is_number(value) and valid(value)):
            raise ValueError(f"model.optimizer.init_args.{name}={value!r} is invalid: it must be {text}")
    betas = init_args.get("betas")
    if isinstance(betas, tuple):  # as the config wrote it
        betas = list(betas)
    if betas is not None and not (
        isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        raise ValueError(f"model.optimizer.init_args.betas={betas!r} is invalid: it must be two numbers in [0, 1)")


def check_flavor_decides_something(arch) -> None:
    """A flavor fills the sizes a config leaves null; one whose every size is given explicitly changes nothing,
    and ``--model.arch.flavor small`` on configs/demo.yaml trained the demo's model without a word."""
    from lighthouse.model.config import FLAVORS

    flavor = arch.get("flavor")
    decided = FLAVORS.get(flavor, {})
    if decided and all(arch.get(name) is not None for name in decided):
        sizes = ", ".join(decided)
        raise ValueError(
            f"model.arch.flavor={flavor!r} sets nothing here: the config gives every size it decides ({sizes}). "
            f"Set those to null to take the flavor's (e.g. --model.arch.dim null), or leave the flavor out"
        )


def _stage_backends(config) -> list[tuple[str, str]]:
    """(flag, backend) of every attention the ``stage`` group may switch to: its stage2_backend and every phase of
    its schedule. (A StageSwitch listed in trainer.callbacks is refused before this runs: refuse_grouped_callbacks.)"""
    found = []
    stage = config.get("stage") if hasattr(config, "get") else None
    if stage is not None and hasattr(stage, "get"):
        if stage.get("switch_step") is not None:  # stage2_backend is read by the switch_step form only
            found.append(("stage.stage2_backend", stage.get("stage2_backend")))
        for i, phase in enumerate(stage.get("schedule") or []):
            attention = phase.get("attention") if hasattr(phase, "get") else getattr(phase, "attention", None)
            found.append((f"stage.schedule[{i}].attention", attention))
    return found


def check_backend_runs_here(config) -> None:
    """The Triton backend needs CUDA tensors: refuse it before any data or model work on a machine (or with
    ``trainer.accelerator: cpu``) where it could only fail at the first forward. TRITON_INTERPRET=1 runs the
    kernels in Triton's interpreter on the CPU instead (slow; for tests)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    uses = [("model.arch.attention", config["model"]["arch"]["attention"]), *_stage_backends(config)]
    cuda_only = [f"{flag}={backend!r}" for flag, backend in uses if backend in CUDA_ONLY_BACKENDS]
    if not cuda_only:
        return
    accelerator = str(config["trainer"].get("accelerator") or "auto")
    if not torch.cuda.is_available():
        why = "no CUDA GPU is visible"
    elif accelerator == "cpu":
        why = "trainer.accelerator is 'cpu'"
    else:
        return
    raise ValueError(
        f"{cuda_only[0]} runs Triton kernels, which need a CUDA GPU, but {why}. Use 'lighthouse_naive' (the same "
        "attention in plain PyTorch) on a CPU, or set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter "
        "(slow; meant for tests)"
    )


def check_context_parallel(trainer, model_config) -> None:
    """A context-parallel degree the run cannot use is refused once the trainer exists (its process count is known)
    and before any process starts, naming the field and the values that would work."""
    strategy = trainer.strategy
    if getattr(strategy, "context_parallel_size", 1) == 1 or not hasattr(strategy, "check_sizes"):
        return
    world = trainer.num_nodes * trainer.num_devices
    strategy.check_sizes(model_config, world)


class NotWritable(OSError):
    """A folder the run must write to cannot be written (read-only, a file in its place, full): exit 2."""


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Write, fsync and remove a small file in ``folder`` (creating it as a save would), so a folder that cannot
    take the run's files is found before the first step instead of at the first checkpoint, steps later. Folders
    created only for the check are removed again: a refused launch leaves nothing behind."""
    folder = os.path.abspath(folder)
    created = []
    probe = os.path.join(folder, f".lighthouse-write-check-{os.getpid()}")
    try:
        parent = folder
        while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
            created.append(parent)
            parent = os.path.dirname(parent)
        os.makedirs(folder, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * 4096)  # a block: a disk with no room left at all fails here too
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise NotWritable(
            f"the {what} {folder} cannot be written ({err.strerror}: {err.filename or folder}); make it "
            "writable or point the run elsewhere (trainer.default_root_dir, or the ModelCheckpoint's dirpath)"
        ) from None
    finally:
        if os.path.lexists(probe):
            os.unlink(probe)
        for path in created:  # innermost first
            try:
                os.rmdir(path)
            except OSError:
                pass
