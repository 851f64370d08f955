"""LightningDataModule: corpus -> tokenizer -> cached shards -> packed, sharded, resumable window stream."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from .corpus import check_corpus_arg, resolve_corpus
from .packing import evenly_spaced, num_windows
from .passkey_mix import check_fraction, training_windows
from .shards import Prepared, SplitReader, open_split, prepare, resolve_tokenizer
from .stream import PackedWindows
from .tokenizer import TextTokenizer, byte_tokenizer, parse_tokenizer_spec

log = logging.getLogger(__name__)

STATE_VERSION = 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _require(ok: bool, name: str, value: Any, valid: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: {valid}")


class LMDataModule(L.LightningDataModule):
    """Packed language-model windows from a tokenized corpus, for long-context pre-training.

    Batches are dicts with ``"tokens"``: LongTensor [batch_size, seq_len + 1] (inputs ``tokens[:, :-1]``,
    targets ``tokens[:, 1:]``) and, with ``return_doc_ids``, ``"doc_ids"`` of the same shape. The training
    stream is unbounded (bound runs with ``max_steps``), reshuffled every pass, split over DDP ranks and
    workers without overlap, and resumes from a checkpoint at the first batch not yet trained on.

    Args:
        seq_len: Tokens per training sequence; each window holds seq_len + 1 tokens (consecutive windows
            share one token, so every token is a target once per pass).
        batch_size: Sequences per batch, per rank.
        corpus: 'stdlib' (this Python's standard library sources, offline everywhere), a directory, file or
            glob of .txt/.jsonl/.parquet files (.txt and .jsonl may be .gz/.zst/.bz2/.xz), or
            'hf:NAME[:CONFIG[:SPLIT]]' to stream a Hugging Face dataset (needs `datasets`).
        tokenizer: 'byte' (256 bytes + EOS), 'bpe:N' (byte-level BPE of N tokens trained on the train split,
            saved under data_dir/tokenizers), or the path of a tokenizers .json file.
        data_dir: Folder for tokenizers, shards and manifests (created if missing).
        num_workers: DataLoader worker processes per rank (0 reads in the main process).
        seed: Fixes the order of training windows; the same seed gives the same batches.
        val_fraction: Fraction of documents (not windows) held out for validation, chosen by a hash of each
            document's key, so the split is stable as the corpus grows.
        val_batches: Validation batches per evaluation, over all ranks: a fixed set of windows spread evenly
            over the validation documents, the same every time.
        return_doc_ids: Also return 'doc_ids', the document index of every token (for document masks).
        text_field: Field holding the text in .jsonl/.parquet records and HF datasets.
        max_documents: Use at most this many documents (in corpus order), for tests and quick demos.
        max_bytes: Stop adding documents once their UTF-8 bytes reach this (the crossing document is kept).
        tokenize_workers: Processes for tokenization (default: all CPUs).
        shard_tokens: Tokens per shard file.
        vocab_multiple_of: Round vocab_size up to a multiple of this (64 helps GPU matmuls); the extra ids
            never occur in the data.
        pin_memory: Pin batches in page-locked memory when CUDA is available.
        progress: Show a progress bar while tokenizing.
        strict_resume: On resume, refuse a checkpoint whose data (seed, seq_len, data or tokenizer
            fingerprint) differs from this configuration; if False, warn and continue at the same position.
        passkey_fraction: Share of training windows replaced by synthetic passkey documents (training keys,
            train-split filler; see lighthouse/data/passkey_mix.py), in [0, 1]. Validation is never mixed.
    """

    def __init__(
        self,
        seq_len: int = 1024,
        batch_size: int = 8,
        corpus: str = "stdlib",
        tokenizer: str = "byte",
        data_dir: str = "data",
        num_workers: int = 0,
        seed: int = 1234,
        val_fraction: float = 0.05,
        val_batches: int = 16,
        return_doc_ids: bool = False,
        text_field: str = "text",
        max_documents: int | None = None,
        max_bytes: int | None = None,
        tokenize_workers: int | None = None,
        shard_tokens: int = 2**28,
        vocab_multiple_of: int = 1,
        pin_memory: bool = True,
        progress: bool = True,
        strict_resume: bool = True,
        passkey_fraction: float = 0.0,
    ):
        super().__init__()
        _require(_is_int(seq_len) and seq_len >= 1, "seq_len", seq_len, "must be an integer >= 1")
        _require(_is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "must be an integer >= 1")
        _require(_is_int(num_workers) and num_workers >= 0, "num_workers", num_workers, "must be an integer >= 0")
        _require(_is_int(seed), "seed", seed, "must be an integer")
        _require(
            isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool) and 0 < val_fraction < 1,
            "val_fraction",
            val_fraction,
            "must be a number with 0 < val_fraction < 1",
        )
        _require(_is_int(val_batches) and val_batches >= 1, "val_batches", val_batches, "must be an integer >= 1")
        for name, v in (("max_documents", max_documents), ("max_bytes", max_bytes)):
            _require(v is None or (_is_int(v) and v >= 1), name, v, "must be None (no limit) or an integer >= 1")
        _require(
            tokenize_workers is None or (_is_int(tokenize_workers) and tokenize_workers >= 1),
            "tokenize_workers",
            tokenize_workers,
            "must be None (all CPUs) or an integer >= 1",
        )
        _require(
            _is_int(shard_tokens) and shard_tokens >= 1,
            "shard_tokens",
            shard_tokens,
            "must be an integer >= 1",
        )
        _require(
            _is_int(vocab_multiple_of) and vocab_multiple_of >= 1,
            "vocab_multiple_of",
            vocab_multiple_of,
            "must be an integer >= 1",
        )
        _require(
            isinstance(text_field, str) and text_field != "",
            "text_field",
            text_field,
            "must be a non-empty string",
        )
        _require(isinstance(corpus, str) and corpus != "", "corpus", corpus, "must be a non-empty string")
        _require(isinstance(tokenizer, str), "tokenizer", tokenizer, "must be a string")
        _require(
            isinstance(data_dir, (str, os.PathLike)) and str(data_dir) != "",
            "data_dir",
            data_dir,
            "must be a folder path",
        )
        check_fraction(passkey_fraction)
        check_corpus_arg(corpus)  # a missing path, an empty directory or a bad 'hf:' spec fails here
        self._tok_spec = parse_tokenizer_spec(tokenizer)
        self.save_hyperparameters()

        self.seq_len = seq_len
        self.batch_size = batch_size
        self.corpus = corpus
        self.data_dir = Path(data_dir)
        self.num_workers = num_workers
        self.seed = seed
        self.val_fraction = float(val_fraction)
        self.val_batches = val_batches
        self.return_doc_ids = return_doc_ids
        self.text_field = text_field
        self.max_documents = max_documents
        self.max_bytes = max_bytes
        self.tokenize_workers = tokenize_workers
        self.shard_tokens = shard_tokens
        self.vocab_multiple_of = vocab_multiple_of
        self.pin_memory = pin_memory
        self.progress = progress
        self.strict_resume = strict_resume
        self.passkey_fraction = passkey_fraction

        self._tokenizer: TextTokenizer | None = byte_tokenizer() if self._tok_spec.kind == "byte" else None
        self._prepared: Prepared | None = None
        self._train_split: SplitReader | None = None
        self._val_split: SplitReader | None = None
        self._train_ds: PackedWindows | None = None
        self._windows_consumed = 0  # global training stream position: windows trained on, over all ranks
        self._pending_state: dict | None = None

    # ------------------------------------------------------------------------------------------------------
    # What the model needs at instantiation

    @property
    def vocab_size(self) -> int:
        """Embedding rows the model needs: the tokenizer's vocabulary, rounded up to vocab_multiple_of."""
        m = self.vocab_multiple_of
        return -(-self._tok_spec.vocab_size // m) * m

    @property
    def eos_id(self) -> int:
        return self._tok_spec.eos_id

    @property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer (a BPE one is trained on first access if not saved yet)."""
        if self._tokenizer is None:
            self._tokenizer = resolve_tokenizer(
                self._tok_spec,
                resolve_corpus(self.corpus, self.text_field),
                self.data_dir,
                val_fraction=self.val_fraction,
                max_documents=self.max_documents,
                max_bytes=self.max_bytes,
                num_proc=self.tokenize_workers or os.cpu_count() or 1,
            )
        return self._tokenizer

    @property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the tokenizer's canonical JSON; store it with checkpoints to catch a mismatch."""
        return self.tokenizer.fingerprint

    @property
    def data_fingerprint(self) -> str:
        """Hash of what the shards hold (files + sha256, tokenizer, split); needs prepare_data()/setup()."""
        return self._require_prepared().manifest["data_fingerprint"]

    @property
    def manifest(self) -> dict:
        return self._require_prepared().manifest

    @property
    def shard_dir(self) -> Path:
        return self._require_prepared().folder

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    # ------------------------------------------------------------------------------------------------------
    # Lightning hooks

    def prepare_data(self) -> None:
        """Tokenize into shards once (Lightning calls this on one process per node)."""
        self._prepare()

    def setup(self, stage: str | None = None) -> None:
        prepared = self._prepare()  # finds the cache that prepare_data() built (builds it without a Trainer)
        self._train_split = open_split(prepared.folder, "train", prepared.tokenizer)
        self._val_split = open_split(prepared.folder, "val", prepared.tokenizer)
        if stage in (None, "fit") and num_windows(self._train_split.n_tokens, self.seq_len) == 0:
            raise ValueError(
                f"the train split of corpus={self.corpus!r} has {self._train_split.n_tokens} tokens "
                f"({self._train_split.n_documents} documents), fewer than seq_len + 1 = {self.seq_len + 1}: "
                f"lower seq_len or use more data "
                f"(max_documents={self.max_documents}, max_bytes={self.max_bytes})"
            )
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
        self._save_manifest_copy()

    def train_dataloader(self) -> DataLoader:
        self._train_ds = self.train_dataset()
        return self._loader(self._train_ds)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset())

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Count training batches as they enter training_step (not when prefetched), one per micro-batch, so
        # gradient accumulation and checkpoints taken in on_train_batch_end see the exact count.
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self.mark_consumed()
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints by Lightning: where the training stream stands, and what it was made of."""
        prepared = self._prepared
        return {
            "version": STATE_VERSION,
            "windows_consumed": self._windows_consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "world_size": self._rank_world()[1],
            "data_fingerprint": prepared.manifest["data_fingerprint"] if prepared else None,
            "tokenizer_fingerprint": prepared.tokenizer.fingerprint if prepared else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream at the first window not trained on (any world size or batch size)."""
        if self._prepared is None:
            self._pending_state = dict(state_dict)  # checked in setup(), once fingerprints are known
        else:
            self._apply_state(state_dict)

    # ------------------------------------------------------------------------------------------------------
    # Datasets (usable without a Trainer)

    def train_dataset(self, rank: int | None = None, world_size: int | None = None) -> PackedWindows:
        """The unbounded training stream of ``rank``, starting after the windows already consumed."""
        r, w = self._rank_world()
        split = self._train_split or self._setup_and_get("_train_split")
        windows = training_windows(self.passkey_fraction, self.tokenizer, self.seq_len, self.seed)
        return windows(
            split,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            rank=r if rank is None else rank,
            world_size=w if world_size is None else world_size,
            seed=self.seed,
            start_window=self._windows_consumed,
            return_doc_ids=self.return_doc_ids,
        )

    def val_dataset(self, rank: int | None = None, world_size: int | None = None) -> PackedWindows:
        """The fixed validation windows: val_batches * batch_size windows spread evenly over the val split."""
        r, w = self._rank_world()
        split = self._val_split or self._setup_and_get("_val_split")
        available = num_windows(split.n_tokens, self.seq_len)
        n_batches = min(self.val_batches, available // self.batch_size)
        if n_batches == 0:
            raise ValueError(
                f"the validation split has {split.n_tokens} tokens ({split.n_documents} documents): "
                f"{available} windows of seq_len + 1 = {self.seq_len + 1} tokens, "
                f"fewer than batch_size={self.batch_size}; "
                f"raise val_fraction (now {self.val_fraction}) or lower seq_len/batch_size"
            )
        if n_batches < self.val_batches:
            log.warning(
                "validation split holds %d batches of %d x %d tokens; using %d, not val_batches=%d",
                n_batches,
                self.batch_size,
                self.seq_len + 1,
                n_batches,
                self.val_batches,
            )
        windows = evenly_spaced(available, n_batches * self.batch_size)
        return PackedWindows(
            split,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            rank=r if rank is None else rank,
            world_size=w if world_size is None else world_size,
            seed=self.seed,
            windows=windows,
            return_doc_ids=self.return_doc_ids,
        )

    def mark_consumed(self, n: int = 1) -> None:
        """Record that ``n`` training batches (per rank) were used; the next iteration starts after them."""
        ds = self._train_ds
        world = ds.world_size if ds is not None else self._rank_world()[1]
        self._windows_consumed += n * world * self.batch_size
        if ds is not None:
            ds.start_window = self._windows_consumed  # for a re-iteration (new epoch of the DataLoader)

    @property
    def windows_consumed(self) -> int:
        return self._windows_consumed

    # ------------------------------------------------------------------------------------------------------

    def _prepare(self) -> Prepared:
        if self._prepared is None:
            corpus = resolve_corpus(self.corpus, self.text_field)
            self._prepared = prepare(
                corpus,
                self._tok_spec,
                self.data_dir,
                val_fraction=self.val_fraction,
                max_documents=self.max_documents,
                max_bytes=self.max_bytes,
                num_proc=self.tokenize_workers,
                shard_tokens=self.shard_tokens,
                progress=self.progress and self._is_global_zero(),
            )
            self._tokenizer = self._prepared.tokenizer
        return self._prepared

    def _require_prepared(self) -> Prepared:
        if self._prepared is None:
            raise RuntimeError("call prepare_data() or setup() first")
        return self._prepared

    def _setup_and_get(self, attr: str) -> SplitReader:
        self.setup()
        return getattr(self, attr)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _is_global_zero(self) -> bool:
        return self._rank_world()[0] == 0

    def _loader(self, ds: PackedWindows) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,
        )  # workers must re-read start_window on re-iteration

    def _apply_state(self, state: dict[str, Any]) -> None:
        self._pending_state = None
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"datamodule state version {state.get('version')!r}, expected {STATE_VERSION}")
        current = self.state_dict()
        mismatches = [
            f"{k}: checkpoint {state.get(k)!r}, now {current[k]!r}"
            for k in ("seed", "seq_len", "data_fingerprint", "tokenizer_fingerprint")
            if state.get(k) is not None and state.get(k) != current[k]
        ]
        if mismatches:
            msg = "resuming on different data: " + "; ".join(mismatches)
            if self.strict_resume:
                raise ValueError(msg + " (set strict_resume=False to continue at the same stream position anyway)")
            log.warning("%s; continuing at window %d", msg, state["windows_consumed"])
        self._windows_consumed = int(state["windows_consumed"])
        if self._train_ds is not None:
            self._train_ds.start_window = self._windows_consumed

    def _save_manifest_copy(self) -> None:
        """Record with the run (next to its logs) exactly what data it read."""
        trainer = self.trainer
        if trainer is None:
            return
        try:
            log_dir = trainer.log_dir  # a broadcast under DDP: every rank must take part
        except Exception:  # loggers without a folder
            return
        if log_dir and trainer.is_global_zero:
            path = Path(log_dir) / "data_manifest.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            manifest = {**self.manifest, "shard_dir": str(self.shard_dir)}
            path.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
