"""The data module's settings, each declared once: its type, default, documentation and check.

LightningCLI shows every field as a ``data.*`` flag with its docstring (the CLI parses attribute docstrings),
because LMDataModule's constructor passes its keyword arguments straight to DataSettings. A check is the
``Rule`` in the field's ``Annotated`` type; ``validate`` runs all of them, so a bad value fails at construction
with the field's name, its value and the valid range.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Annotated, Any, get_type_hints

from .corpus import HF_PREFIX, PYTHON, STDLIB, check_corpus_arg, glob_match, glob_root_and_pattern
from .recall import check_room
from .tokenizer import TokenizerSpec, parse_tokenizer_spec


@dataclass(frozen=True)
class Rule:
    """A condition a setting's value must meet, and how an error message states it."""

    holds: Callable[[Any], bool]
    text: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_at_least(lowest: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= lowest, f"must be an integer >= {lowest}")


def _positive_or_none(none_means: str) -> Rule:
    return Rule(lambda v: v is None or (_is_int(v) and v >= 1), f"must be None ({none_means}) or an integer >= 1")


POSITIVE = _int_at_least(1)
NON_NEGATIVE = _int_at_least(0)
INTEGER = Rule(_is_int, "must be an integer")
FRACTION = Rule(
    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
    "must be a number with 0 < value < 1",
)
SHARE = Rule(
    lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
    "must be a number in [0, 1]",
)
LIMIT = _positive_or_none("no limit")
# Matmul tiles want multiples of 64 or 128; a larger multiple only adds embedding rows that are never used (10^9
# of them would be terabytes of weights).
VOCAB_MULTIPLE = Rule(lambda v: _is_int(v) and 1 <= v <= 65536, "must be an integer in [1, 65536]")
NAME = Rule(lambda v: isinstance(v, str) and v != "", "must be a non-empty string")
TEXT = Rule(lambda v: isinstance(v, str), "must be a string")
FOLDER = Rule(lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "", "must be a folder path")
PAIRS = Rule(lambda v: _is_int(v) and 1 <= v <= 64, "must be an integer in [1, 64]")
SWITCH = Rule(lambda v: isinstance(v, bool), "must be true or false")


@dataclass(frozen=True)
class DataSettings:
    """What the data module reads, how it tokenizes and splits it, and how it serves the windows."""

    seq_len: Annotated[int, POSITIVE] = 1024
    """Tokens per training sequence; each window holds seq_len + 1 tokens (consecutive windows share one token,
    so every token is a target once per pass)."""
    batch_size: Annotated[int, POSITIVE] = 8
    """Sequences per batch, per rank."""
    corpus: Annotated[str, NAME] = "stdlib"
    """'stdlib' (this Python's standard library sources, offline everywhere), 'python' (the standard library plus
    every site-packages/dist-packages folder of this interpreter; the manifest names each package and version),
    a directory, file or glob of .txt/.jsonl/.parquet files (.txt and .jsonl may be .gz/.zst/.bz2/.xz), or
    'hf:NAME[:CONFIG[:SPLIT]]' to stream a Hugging Face dataset (needs `datasets`). Quote a glob on the command
    line (--data.corpus 'texts/*.txt'), or the shell expands it into one argument per file. Directory symlinks
    are not followed; FIFOs, sockets, devices and broken or looping links are skipped and counted."""
    tokenizer: Annotated[str | None, TEXT] = None
    """'byte' (256 bytes + EOS), 'bpe:N' (byte-level BPE of N tokens trained on the train split, saved under
    data_dir/tokenizers), the path of a tokenizers .json file, or 'hf:DIR' (DIR/tokenizer.json of a Hugging Face
    model folder, with its BOS at every document start). Null: 'byte', or with model.init_from 'hf:' that
    folder."""
    data_dir: Annotated[str, FOLDER] = "data"
    """Folder for tokenizers, shards and manifests (created if missing), outside the corpus folder. A read-only
    one works while it holds the tokenizer and shards this configuration needs."""
    num_workers: Annotated[int, NON_NEGATIVE] = 0
    """DataLoader worker processes per rank (0 reads in the main process)."""
    seed: Annotated[int, INTEGER] = 1234
    """Fixes the order of training windows; the same seed gives the same batches."""
    val_fraction: Annotated[float, FRACTION] = 0.05
    """Fraction of documents (not windows) held out for validation, chosen by a hash of each document's key, so
    the split is stable as the corpus grows. A corpus of one document holds out this fraction of its tokens, at
    its end."""
    val_batches: Annotated[int, POSITIVE] = 16
    """Validation batches per evaluation, over all ranks: a fixed set of val_batches * batch_size windows spread
    evenly over the validation documents, the same every time. No upper bound: a few hundred windows, enough to
    compare runs, are fine where the split holds them (at most (val tokens - 1) // seq_len; fewer are used, with a
    warning; raise val_fraction or use a larger corpus for more). `python -m lighthouse.eval.window_losses`
    saves these windows' losses one by one."""
    text_field: Annotated[str, NAME] = "text"
    """Field holding the text in .jsonl/.parquet records and HF datasets."""
    max_documents: Annotated[int | None, LIMIT] = None
    """Use at most this many documents (in corpus order), for tests and quick demos."""
    max_bytes: Annotated[int | None, LIMIT] = None
    """Stop adding documents once their UTF-8 bytes reach this (the crossing document is kept)."""
    tokenize_workers: Annotated[int | None, _positive_or_none("all CPUs")] = None
    """Processes for tokenization (default: all CPUs)."""
    shard_tokens: Annotated[int, POSITIVE] = 2**28
    """Tokens per shard file."""
    vocab_multiple_of: Annotated[int, VOCAB_MULTIPLE] = 1
    """Round vocab_size up to a multiple of this (64 helps GPU matmuls), in [1, 65536]; the extra ids never occur
    in the data."""
    pin_memory: Annotated[bool, SWITCH] = True
    """Pin batches in page-locked memory when CUDA is available."""
    progress: Annotated[bool, SWITCH] = True
    """Show a progress bar while tokenizing."""
    strict_resume: Annotated[bool, SWITCH] = True
    """On resume, refuse a checkpoint whose data (seed, seq_len, data or tokenizer fingerprint) differs from this
    configuration; if False, warn and continue at the same position."""
    passkey_fraction: Annotated[float, SHARE] = 0.0
    """Share of training windows replaced by synthetic passkey documents (training keys, train-split filler; see
    lighthouse/data/passkey_mix.py), in [0, 1]. Validation is never mixed."""
    recall_fraction: Annotated[float, SHARE] = 0.0
    """Share of training windows that get recall_pairs key-value assignments (`KV_3f9a = "80417"`) inserted at
    random positions of their text, each with a later `assert KV_3f9a == "80417"` at a distance spread over the
    bins 64-1k, 1k-4k, 4k-16k, 16k-seq_len (training keys only; see lighthouse/data/recall.py), in [0, 1]. A
    window the passkey mix replaced gets none. Validation is never mixed."""
    recall_pairs: Annotated[int, PAIRS] = 8
    """Assignment/query pairs per recall window, in [1, 64]; together they may fill at most half the window."""

    def __post_init__(self) -> None:
        if self.tokenizer is None:  # the CLI has put model.init_from's folder here if there is one
            object.__setattr__(self, "tokenizer", "byte")
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field by its CLI key (``data.seq_len``), its value and the
        valid range."""
        for name, rules in _rules(type(self)).items():
            value = getattr(self, name)
            for rule in rules:
                if not rule.holds(value):
                    raise ValueError(f"{cli_key(name)}={value!r} is invalid: {rule.text}")
        if self.recall_fraction > 0 and (why := check_room(self.seq_len, self.recall_pairs)):
            raise ValueError(
                f"{cli_key('recall_pairs')}={self.recall_pairs} is invalid with {cli_key('seq_len')}={self.seq_len} "
                f"({cli_key('recall_fraction')}={self.recall_fraction}): {why}; lower recall_pairs or raise seq_len"
            )
        with named_by_cli_key("corpus", self.corpus):  # a missing path, an empty directory or a bad 'hf:' spec
            check_corpus_arg(self.corpus)
        if _corpus_walk_enters(self.corpus, self.data_dir):
            raise ValueError(
                f"{cli_key('data_dir')}={str(self.data_dir)!r} lies in a folder that {cli_key('corpus')}="
                f"{self.corpus!r} reads: the cache's own files would become training documents; move data_dir "
                "out of the corpus"
            )
        with named_by_cli_key("tokenizer", self.tokenizer):
            self.tokenizer_spec()

    def tokenizer_spec(self) -> TokenizerSpec:
        """The parsed ``tokenizer`` setting: vocab_size and eos_id, known before any data is read."""
        return parse_tokenizer_spec(self.tokenizer)


def cli_key(field: str) -> str:
    """The flag a field is set by: the CLI's data module group is ``data`` (LightningCLI names it so)."""
    return f"data.{field}"


@contextmanager
def named_by_cli_key(field: str, value: Any) -> Iterator[None]:
    """Re-raise a check's ValueError under the field's CLI key: the corpus and tokenizer checks live in modules
    that also serve other callers, and name the bare field (``corpus='x': ...``) or none at all."""
    try:
        yield
    except ValueError as err:
        text = str(err)
        named = text.startswith(f"{field}=")
        raise ValueError(cli_key(field) + (text[len(field) :] if named else f"={value!r}: {text}")) from err


def _corpus_walk_enters(corpus: str, folder: str | os.PathLike) -> bool:
    """Whether listing ``corpus`` walks into ``folder``. The walk follows no directory link, so both sides are
    compared as real paths; it skips dot folders of a directory and folders a glob cannot match. The stdlib and
    python corpora take only .py files, which a data_dir never holds."""
    if corpus in (STDLIB, PYTHON) or corpus.startswith(HF_PREFIX):
        return False
    if glob.has_magic(corpus):
        root, pattern = glob_root_and_pattern(corpus)
    elif Path(corpus).is_dir():
        root, pattern = Path(corpus), None
    else:  # a single file
        return False
    try:
        inside = Path(os.path.realpath(folder)).relative_to(os.path.realpath(root)).parts
    except ValueError:
        return False
    if pattern is None:
        return not any(part.startswith(".") for part in inside)
    return glob_match(pattern, inside, prefix=True)


@cache
def _rules(cls: type) -> dict[str, tuple[Rule, ...]]:
    """{field: its Rules}, from the fields' Annotated types, in declaration order."""
    hints = get_type_hints(cls, include_extras=True)
    return {
        f.name: tuple(m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Rule)) for f in fields(cls)
    }
