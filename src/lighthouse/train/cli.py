"""LightningCLI wiring: argument groups and links, the run directory, defaults, quiet output, config saving."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from jsonargparse import ArgumentError, set_parsing_settings
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lighthouse.checkpoint.files import newest_usable, read_metadata, recorded_step
from lighthouse.checkpoint.io import is_remote
from lighthouse.checkpoint.resume import (
    check_override_names,
    override_names,
    refuse_data_change,
    refuse_foreign_checkpoint,
    refuse_tokenizer_change,
)
from lighthouse.data.datamodule import LMDataModule
from lighthouse.hf_import import read_hf_config
from lighthouse.train import arg_errors, compat, exits
from lighthouse.train.cli_parser import LighthouseArgumentParser
from lighthouse.train.lit_module import LitLM
from lighthouse.train.preflight import (
    NotWritable,
    accumulation_notes,
    check_backend_runs_here,
    check_context_parallel,
    check_flavor_decides_something,
    check_optimizer_args,
    check_run_has_an_end,
    check_trainer_args,
    check_writable,
)
from lighthouse.train.progress import StepProgressBar, describe_model, quiet_lightning, quiet_validate
from lighthouse.train.run_dir import RunPlacement, is_local_path, place_run
from lighthouse.train.run_loggers import pin_checkpoint_folder
from lighthouse.train.safety import checkpoint_folders, prepare_fit, with_safety
from lighthouse.train.stage import StageSwitch
from lighthouse.train.throughput import ThroughputRecorder

# Callbacks the CLI always adds, each configured through its own argument group (``--stage.switch_step 10``).
CALLBACK_GROUPS = {"stage": StageSwitch, "throughput": ThroughputRecorder}


class KeepEveryConfig(SaveConfigCallback):
    """Save the run's config as config.yaml, or config.1.yaml, config.2.yaml ... when resuming into the same
    directory, so a resumed or recovery-stage job never fails on an existing file and nothing is overwritten."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir  # a collective: every rank must read it exactly once here
            name = "config.yaml"
            if trainer.is_global_zero and log_dir is not None:
                n = 0
                while os.path.exists(os.path.join(log_dir, name)):
                    n += 1
                    name = f"config.{n}.yaml"
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


def check_start_step(trainer, ckpt_path) -> None:
    """A config that continues a run (stage.min_start_step > 0, e.g. a recovery config) refuses to start at an
    earlier step, in particular from scratch when no checkpoint was found.

    The step is the one ``--ckpt_path last`` was resolved by (``recorded_step`` keeps it), or for a path given
    explicitly the checkpoint's metadata alone: the restore is the one read of the weights. A step that cannot be
    read here (a file that does not load) is left to the restore, which says what is wrong with the file."""
    switch = next((cb for cb in trainer.callbacks if isinstance(cb, StageSwitch)), None)
    if switch is None or switch.min_start_step == 0:
        return
    if ckpt_path is None:
        switch.check_start(0, "no checkpoint was found, so training would start at step 0 from scratch")
    elif not is_remote(ckpt_path):
        step = recorded_step(ckpt_path)
        if step is not None:
            switch.check_start(step, f"the checkpoint {ckpt_path} is at step {step}")


def checkpoint_this_launch_loads(config, placement: RunPlacement, subcommand: str | None) -> Path | None:
    """The local checkpoint this launch will load, as known before the classes are built: place_run has resolved
    every local ``--ckpt_path`` to a file already, but not fit's ``last``, which safety.prepare_fit resolves later in
    the run folder place_run chose (its newest checkpoint that verifies, as here). None: nothing local to load."""
    ckpt_path = config.get("ckpt_path")
    if ckpt_path == "last" and subcommand == "fit":
        return newest_usable(placement.path / "checkpoints")[0]
    return Path(ckpt_path) if is_local_path(ckpt_path) else None


def check_data_of_checkpoint(config, placement: RunPlacement, subcommand: str | None) -> None:
    """The checkpoint's tokenizer against data.tokenizer, and a fit's data seed and window length, before the data
    module trains a BPE or tokenizes the corpus: those take minutes on a real corpus, and the restore would only then
    fail (on model.arch.vocab_size, or on the data module's own comparison)."""
    ckpt_path = checkpoint_this_launch_loads(config, placement, subcommand)
    if ckpt_path is None:
        return
    state = read_metadata(ckpt_path)  # once for the three checks: the tensors memory-mapped, never read
    refuse_foreign_checkpoint(ckpt_path, state)
    refuse_tokenizer_change(ckpt_path, config["data"].get("tokenizer") or "byte", state)  # null: DataSettings: byte
    if subcommand == "fit":  # validate restores the weights only: any data and window length may evaluate them
        refuse_data_change(ckpt_path, config["data"], state)


def refuse_grouped_callbacks(trainer: dict) -> None:
    """A StageSwitch or ThroughputRecorder in trainer.callbacks would run twice and fight over one state key."""
    callbacks = trainer.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        class_path = str(callback.get("class_path", "")) if hasattr(callback, "get") else ""
        for group, kind in CALLBACK_GROUPS.items():
            if class_path.rsplit(".", 1)[-1] == kind.__name__:
                raise ValueError(
                    f"trainer.callbacks lists {kind.__name__}, which the CLI always adds: set its "
                    f"arguments as {group}.* instead (listed by --help)"
                )


def default_tokenizer(config) -> None:
    """data.tokenizer left null: the model.init_from folder's tokenizer (the one its weights were trained with).
    The folder is checked first (it exists, its config.json describes a Llama), so a mistyped or moved one is named
    as model.init_from, not as the data.tokenizer this derives from it."""
    init_from = config["model"].get("init_from")
    if init_from is None:
        return
    read_hf_config(init_from)
    if config["data"].get("tokenizer") is None:
        config["data"]["tokenizer"] = f"hf:{init_from}"


class LighthouseCLI(LightningCLI):
    run_placement: RunPlacement | None = None

    def init_parser(self, **kwargs):
        # Parse errors come back as exceptions (parse_arguments prints them briefly) instead of a usage dump, and a
        # flag is never silently taken for a longer one (argparse's abbreviations: --trainer.max_step set max_steps)
        # since a config file's key must match exactly too.
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("allow_abbrev", False)
        parser = super().init_parser(**kwargs)
        self._parsers = [*getattr(self, "_parsers", []), parser]
        return parser

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            known = {opt[2:] for p in self._parsers for a in p._actions for opt in a.option_strings if opt[:2] == "--"}
            given = sys.argv[1:] if args is None else [str(a) for a in args] if isinstance(args, list) else []
            command = [parser.prog.replace(" [options]", ""), *[a for a in given[:1] if a in self.subcommands()]]
            arg_errors.report(str(err), known, " ".join(command), given)
            raise SystemExit(exits.EXIT_USAGE) from None

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only the subcommands this LightningModule implements: no test_step (there is no test split) and no
        # predict_step; sampling is src/generate.py, evaluation by other tools goes through src/export.py.
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_args(config["trainer"])
        if self.subcommand == "fit":
            check_run_has_an_end(config["trainer"])
            for note in accumulation_notes(config["trainer"]):
                rank_zero_info(note)
        check_optimizer_args(config["model"])
        check_flavor_decides_something(config["model"]["arch"])
        refuse_grouped_callbacks(config["trainer"])
        check_backend_runs_here(config)
        check_override_names(override_names(config.get("resume_overrides")))
        default_tokenizer(config)
        try:
            self.run_placement = place_run(config, self.subcommand)
        except OSError as err:  # a read-only or full log root, or a file where a folder should be
            if isinstance(err, FileNotFoundError) or err.filename is None:
                raise  # a missing --ckpt_path or no checkpoint for `last`: its own message says what is missing
            raise NotWritable(
                f"cannot create the run folder {err.filename}: {err.strerror}. trainer.default_root_dir (the folder "
                "that holds every run) must be writable"
            ) from None
        if self.run_placement.note:
            rank_zero_info(self.run_placement.note)
        check_data_of_checkpoint(config, self.run_placement, self.subcommand)

    def instantiate_trainer(self, **kwargs):
        config = self.config[self.subcommand] if self.subcommand else self.config
        # Everything Lightning writes without a logger (fast_dev_run checkpoints, profiles) lands in the run too.
        kwargs.setdefault("default_root_dir", str(self.run_placement.path))
        trainer = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, StepProgressBar()])
        # Reliability never depends on a config line: the checkpoint IO and the guard callbacks are always there.
        kwargs = with_safety(kwargs, trainer, override_names(config.get("resume_overrides")))
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        check_context_parallel(self.trainer, self.model.config)
        self.run_placement.restore_requested_values()
        pin_checkpoint_folder(self.trainer, self.run_placement.path)
        if self.subcommand is not None:
            rank_zero_info(f"run directory: {self.run_placement.path}")
            rank_zero_info(describe_model(self.model))

    def check_folders_writable(self, checkpoints: bool) -> None:
        """Every folder the run writes to takes a file now, or the launch ends here (before the first step; a
        read-only checkpoint folder used to surface at the first save, after the steps before it were done)."""
        if not self.trainer.is_global_zero:
            return
        check_writable(self.run_placement.path, "run folder")
        for folder in checkpoint_folders(self.trainer) if checkpoints else []:
            check_writable(folder, "checkpoint folder")

    def before_fit(self) -> None:
        self.check_folders_writable(checkpoints=True)
        fit_args = self.config_init[self.subcommand]
        fit_args["ckpt_path"] = prepare_fit(self.trainer, fit_args.get("ckpt_path"))
        check_start_step(self.trainer, fit_args["ckpt_path"])

    def before_validate(self) -> None:
        quiet_validate()
        self.check_folders_writable(checkpoints=False)
        if self.run_placement.ckpt_path is not None:  # `--ckpt_path last`, resolved by place_run
            self.config_init[self.subcommand]["ckpt_path"] = self.run_placement.ckpt_path

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would overwrite the model config with the checkpoint's hyperparameters. Here the config on
        # the command line is the source of truth (the recovery stage changes the attention backend); the
        # checkpoint is instead checked against it in LitLM.on_load_checkpoint, which names any field that
        # changes parameter shapes.
        return

    def add_arguments_to_parser(self, parser) -> None:
        # The tokenizer decides the vocabulary and the data the context length; neither is configured twice.
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.seq_len", "model.arch.seq_len", apply_on="parse")
        parser.set_defaults({"trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true"})
        # Lightning's summary table has a FLOPs column that is always 0 here; the run start prints one line instead.
        parser.set_defaults({"trainer.enable_model_summary": False})
        for group, kind in CALLBACK_GROUPS.items():
            parser.add_lightning_class_args(kind, group)
        parser.add_argument(
            "--resume_overrides",
            type=list[str] | str,
            default=[],
            help="Model fields whose change on resume is accepted although it alters what the trained weights "
            "compute (norm_eps, rope_theta); any other such change is refused.",
        )


def main(args: list[str] | None = None) -> LighthouseCLI:
    # Config dataclasses (ModelConfig, DataSettings) document their fields in attribute docstrings: --help and
    # --print_config=comments show them.
    compat.check_versions()
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    quiet_lightning()
    return LighthouseCLI(
        LitLM,
        LMDataModule,
        save_config_callback=KeepEveryConfig,
        parser_class=LighthouseArgumentParser,
        # The optimizer, its parameter groups and the LR schedule are LitLM's (model.optimizer, model.lr_schedule):
        # LightningCLI's own top-level --optimizer / --lr_scheduler would replace or skip them without a word.
        auto_configure_optimizers=False,
        args=args,
    )


def run(args: list[str] | None = None) -> int:
    """The command-line entry point: ``main`` with exit codes, and user errors as messages (lighthouse.train.exits)."""
    return exits.run(main, args)


def entry_point() -> None:
    """The ``lighthouse`` console script: ``lighthouse fit --config configs/demo.yaml``, with train.py's exit codes."""
    raise SystemExit(run())
