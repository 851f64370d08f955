"""The CLI's argument parser: LightningCLI's, with the checkpoint arguments of fit and validate documented as this
project reads them."""

from __future__ import annotations

import inspect

from lightning.pytorch.cli import LightningArgumentParser

# fit's and validate's checkpoint arguments as this project reads them (run_dir.resolve_ckpt_path, checkpoint.io):
# Lightning's own docstrings describe `last` and `best` of an earlier trainer.fit in the same process and a None
# default, which would mislead here.
CKPT_PATH_HELP = (
    "The checkpoint to resume (fit) or to validate: a .ckpt file (or a sharded checkpoint folder) or a URL; a run "
    "folder (logs/<name>/<start time>) or its checkpoints/, meaning its newest checkpoint that verifies; a run name "
    "(logs/<name>), meaning the same in its run with the newest checkpoint; or last, the same for this config's run "
    "name (trainer.logger.init_args.name). A launch that resumes a run continues that run's folder. best is "
    "refused: a new launch has no best checkpoint to go back to. null: fit starts from step 0."
)
WEIGHTS_ONLY_HELP = (
    "Checkpoints load with torch.load(weights_only=True) when this is true or null (the default): tensors and "
    "plain data only, so nothing in a checkpoint runs. false unpickles any Python object: only for files you "
    "wrote yourself."
)
OWN_METHOD_ARGUMENTS = {"ckpt_path": (str | None, CKPT_PATH_HELP), "weights_only": (bool | None, WEIGHTS_ONLY_HELP)}


class LighthouseArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with fit's and validate's ``--ckpt_path`` and ``--weights_only`` documented as this
    project reads them (``OWN_METHOD_ARGUMENTS``).

    LightningCLI adds a subcommand's arguments from the Trainer method's signature and docstring with
    ``add_method_arguments`` and passes the method exactly the keys that call returns; so these two are skipped
    there and added here with their own help, and returned with the rest."""

    def add_method_arguments(self, class_type, method_name, *args, skip=None, **kwargs) -> list[str]:
        parameters = inspect.signature(getattr(class_type, method_name)).parameters
        own = [name for name in OWN_METHOD_ARGUMENTS if name in parameters]
        added = super().add_method_arguments(class_type, method_name, *args, skip={*(skip or ()), *own}, **kwargs)
        group = self.add_argument_group("Checkpoint to load") if own else None
        for name in own:
            kind, help_text = OWN_METHOD_ARGUMENTS[name]
            group.add_argument(f"--{name}", type=kind, default=None, help=help_text)
        return [*added, *own]
