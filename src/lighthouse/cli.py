"""LightningCLI wiring: argument links, device-dependent defaults, config saving that never blocks a resume."""

from __future__ import annotations

import os

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lighthouse import exits
from lighthouse.data.datamodule import LMDataModule
from lighthouse.lit_module import LitLM
from lighthouse.preflight import check_backend_runs_here, check_trainer_args
from lighthouse.resume import check_override_names, override_names
from lighthouse.safety import prepare_fit, with_safety


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


class LighthouseCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # Only the subcommands this LightningModule implements: no test_step (there is no test split) and no
        # predict_step; sampling is src/generate.py, evaluation by other tools goes through src/export.py.
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_args(config["trainer"])
        check_backend_runs_here(config)
        check_override_names(override_names(config.get("resume_overrides")))

    def instantiate_trainer(self, **kwargs):
        # Reliability never depends on a config line: the checkpoint IO and the guard callbacks are always there.
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer_config = self._get(self.config_init, "trainer", default={})
        kwargs = with_safety(kwargs, trainer_config, override_names(config.get("resume_overrides")))
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        fit_args = self.config_init[self.subcommand]
        fit_args["ckpt_path"] = prepare_fit(self.trainer, fit_args.get("ckpt_path"))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI would overwrite the model config with the checkpoint's hyperparameters. Here the config on
        # the command line is the source of truth (the recovery stage changes the attention backend); the
        # checkpoint is instead checked against it in LitLM.on_load_checkpoint, which names any field that
        # changes parameter shapes.
        return

    def add_arguments_to_parser(self, parser) -> None:
        # The tokenizer decides the vocabulary and the data the context length; neither is configured twice.
        parser.link_arguments("data.vocab_size", "model.arch.vocab_size", apply_on="instantiate")
        parser.link_arguments("data.seq_len", "model.arch.max_seq_len", apply_on="parse")
        parser.set_defaults({"trainer.precision": "bf16-mixed" if torch.cuda.is_available() else "32-true"})
        parser.add_argument(
            "--resume_overrides", type=list[str] | str, default=[],
            help="Model fields whose change on resume is accepted although it alters what the trained weights "
                 "compute (norm_eps, rope_theta); any other such change is refused.",
        )


def main(args: list[str] | None = None) -> LighthouseCLI:
    # Config dataclasses (ModelConfig, DataSettings) document their fields in attribute docstrings; --help shows them.
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    return LighthouseCLI(
        LitLM,
        LMDataModule,
        save_config_callback=KeepEveryConfig,
        args=args,
    )


def run(args: list[str] | None = None) -> int:
    """The command-line entry point: ``main`` with exit codes, and user errors as messages (lighthouse.exits)."""
    return exits.run(main, args)
