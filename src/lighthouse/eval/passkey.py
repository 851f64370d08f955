"""Passkey retrieval test: a key hidden at a chosen depth of real filler text, scored with one forward per prompt.

The document format and keys are in data/passkey_format.py (the training mix writes the same documents), the
settings and prompts in passkey_prompts.py, the scoring in passkey_scores.py. This module runs it on a model:
at each validation (LitLM, ``model.passkey``) or on any checkpoint:

    python -m lighthouse.eval.passkey --ckpt PATH [--lengths 8192 32768] [--depths 0.1 0.5 0.9]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lighthouse.data.passkey_format import Encoder, PromptFormat, TokenSource, min_length
from lighthouse.eval.passkey_prompts import PasskeyConfig, make_prompts
from lighthouse.eval.passkey_scores import DIGIT_CHANCE, LogitsFn, PasskeyScores, evaluate
from lighthouse.model.transformer import dense_eager


# ---- running on a model ---------------------------------------------------------------------------------------
class PasskeyEval:
    """The fixed prompt set of one configuration, and its evaluation on a model."""

    def __init__(self, config: PasskeyConfig, tokenizer: Encoder, filler: TokenSource, max_len: int):
        self.config = config
        self.format = PromptFormat.from_tokenizer(tokenizer, config.key_digits)
        self.cells, self.prompts = make_prompts(config, self.format, filler, config.resolved_lengths(max_len))

    def score(
        self,
        logits_fn: LogitsFn,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> PasskeyScores:
        counts = evaluate(
            logits_fn, self.prompts, len(self.cells), self.format, device, self.config.batch_tokens, rank, world_size
        )
        if reduce_sum is not None:
            counts = reduce_sum(counts)
        return PasskeyScores(self.cells, counts.cpu().numpy(), self.config.key_digits)


def split_reader(datamodule, split: str) -> TokenSource:
    """The token stream of a data module's 'train' or 'val' split (the one place that knows the module's API)."""
    dataset = datamodule.val_dataset() if split == "val" else datamodule.train_dataset()
    return dataset.split


# ---- command line: any checkpoint -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> PasskeyScores:
    from lighthouse.tool_args import summary

    parser = argparse.ArgumentParser(prog="python -m lighthouse.eval.passkey", description=summary(__doc__))
    parser.add_argument(
        "--ckpt",
        required=True,
        help="a .ckpt written by training, or a run folder (logs/demo/<start time>) or run name (logs/demo), "
        "optionally followed by /last: its newest checkpoint that verifies",
    )
    parser.add_argument("--lengths", type=int, nargs="+", help="default: the training seq_len /4, /2, /1")
    parser.add_argument("--depths", type=float, nargs="+", default=PasskeyConfig().depths)
    parser.add_argument("--samples", type=int, default=8, help="prompts per (length, depth) cell")
    parser.add_argument("--key-digits", type=int, default=PasskeyConfig().key_digits)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="where the run's data module keeps its shards (default: as trained)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the scores to this file")
    args = parser.parse_args(argv)
    from lighthouse.checkpoint.read import dense_model, read_checkpoint
    from lighthouse.checkpoint.records import saved_model_config
    from lighthouse.eval.val_windows import run_datamodule
    from lighthouse.tool_args import about, checked_device, local_path, output_file, write_json
    from lighthouse.train.run_dir import find_checkpoint  # the run layout; only the command needs it

    if args.json is not None:  # before the evaluation, not after it; a blank value is refused
        output_file("--json", args.json, reads=[args.ckpt])
    local_path("--ckpt", args.ckpt)
    device = checked_device("--device", args.device)
    config = PasskeyConfig(args.lengths, args.depths, args.samples, args.key_digits, args.seed)
    config.validate(2**31, prefix="--", longer_ok=True)  # every range but the context's, before reading anything
    path = find_checkpoint(args.ckpt)
    with about("--ckpt", args.ckpt):
        ckpt = read_checkpoint(path, mmap=True)  # verified, weights_only; a sharded folder gets the command
        max_len = saved_model_config(ckpt).seq_len
    # Before the model and the data exist: a length past the model's context would allocate without bound (10^8
    # tokens took 23 GB) and tests positions the model never saw.
    if min_length(args.key_digits) > max_len:
        raise ValueError(
            f"--ckpt={args.ckpt!r} is invalid: its context ({max_len} tokens) is shorter than the shortest passkey "
            f"prompt ({min_length(args.key_digits)} tokens with --key-digits {args.key_digits})"
        )
    config.validate(max_len, prefix="--", longer_ok=False)
    with about("--ckpt", args.ckpt):
        model = dense_model(ckpt).to(device)
    with about("--ckpt", args.ckpt):  # the run's own data module: its filler text
        datamodule = run_datamodule(ckpt, args.data_dir)
    evaluator = PasskeyEval(config, datamodule.tokenizer, split_reader(datamodule, "val"), model.config.seq_len)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    with dense_eager(model), autocast:
        scores = evaluator.score(model, device)
    print(
        f"passkey, {path} (step {ckpt.get('global_step')}), dense attention; "
        f"exact match (digit accuracy, chance {DIGIT_CHANCE}):"
    )
    print(scores.table())
    print("all: exact {:.3f}, digit accuracy {:.3f}".format(*scores.accuracy()))
    if args.json is not None:
        record = {"ckpt": str(path), "global_step": ckpt.get("global_step"), **scores.as_dict()}
        write_json("--json", args.json, record)
    return scores


if __name__ == "__main__":
    from lighthouse.tool_args import entry_point

    entry_point(main)
