"""LightningDataModule: corpus -> tokenizer -> cached shards -> packed, sharded, resumable window stream."""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from .build import Selection
from .cache import Prepared, prepare, resolve_tokenizer
from .corpus import CorpusSpec, resolve_corpus
from .packing import evenly_spaced, num_windows
from .passkey_mix import passkey_mix
from .recall import recall_mix
from .settings import DataSettings
from .shards import SplitReader, open_split
from .stream import FirstMix, PackedWindows, WindowMix, require_windows
from .tokenizer import TextTokenizer, byte_tokenizer

log = logging.getLogger(__name__)

STATE_VERSION = 1


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM and SIGINT: the training process stops after the step, saves it and shuts its
    workers down. A signal to the whole process group (SLURM's preemption, ``timeout``, ``kill -TERM -PGID``, Ctrl-C
    in a terminal) reaches the workers too: torch's worker handler made a SIGTERM from anyone but the parent fatal, and
    the training process then raised "DataLoader worker ... is killed by signal: Terminated" instead of saving the step
    reached (exit 1, nothing saved); the Ctrl-C handler a worker inherited printed its message once per worker. A
    worker whose parent dies still exits by itself (torch's worker watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LMDataModule(L.LightningDataModule):
    """Packed language-model windows from a tokenized corpus, for long-context pre-training.

    Batches are dicts with ``"tokens"``: LongTensor [batch_size, seq_len + 1] (inputs ``tokens[:, :-1]``,
    targets ``tokens[:, 1:]``). The training stream is unbounded (bound runs with ``max_steps``), reshuffled
    every pass, split over DDP ranks and workers without overlap, and resumes from a checkpoint at the first
    batch not yet trained on. The keyword arguments are the fields of ``DataSettings`` (documented there).
    """

    def __init__(self, **settings: Any):
        super().__init__()
        # LightningCLI (jsonargparse) follows **settings into this call: each DataSettings field is a data.* flag.
        self.settings = DataSettings(**settings)
        self.save_hyperparameters(asdict(self.settings))
        self._tok_spec = self.settings.tokenizer_spec()
        self._tokenizer: TextTokenizer | None = byte_tokenizer() if self._tok_spec.kind == "byte" else None
        self._corpus: CorpusSpec | None = None
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
        m = self.settings.vocab_multiple_of
        return -(-self._tok_spec.vocab_size // m) * m

    @property
    def eos_id(self) -> int:
        return self._tok_spec.eos_id

    @property
    def tokenizer(self) -> TextTokenizer:
        """The tokenizer (a BPE one is trained on first access if not saved yet)."""
        if self._tokenizer is None:
            s = self.settings
            self._tokenizer = resolve_tokenizer(
                self._tok_spec,
                self.corpus,
                Path(s.data_dir),
                self._selection(),
                s.tokenize_workers or os.cpu_count() or 1,
            )
        return self._tokenizer

    @property
    def corpus(self) -> CorpusSpec:
        """The corpus listing (made once: it walks the folders and logs what it skipped)."""
        if self._corpus is None:
            self._corpus = resolve_corpus(self.settings.corpus, self.settings.text_field)
        return self._corpus

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
        """Tokenize into shards once, or verify the cached ones (Lightning calls this on one process per node)."""
        self._prepare(checksums=True)

    def setup(self, stage: str | None = None) -> None:
        # With a Trainer, prepare_data() has verified (or rebuilt) the cache on this node: the other ranks only
        # find it. Without one, nothing did, so setup() verifies.
        prepared = self._prepare(checksums=self.trainer is None)
        self._train_split = open_split(prepared.folder, "train", prepared.tokenizer)
        self._val_split = open_split(prepared.folder, "val", prepared.tokenizer)
        if stage in (None, "fit"):  # before anything else is built: the settings that decide the size in the hint
            s = self.settings
            require_windows(
                self._train_split,
                s.seq_len,
                f"the train split of corpus={s.corpus!r}",
                f"use more data (max_documents={s.max_documents}, max_bytes={s.max_bytes})",
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
            "seed": self.settings.seed,
            "seq_len": self.settings.seq_len,
            "batch_size": self.settings.batch_size,
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

    def training_mix(self) -> WindowMix | None:
        """What changes some training windows: the passkey mix when ``passkey_fraction`` > 0, then the recall
        mix when ``recall_fraction`` > 0 (on windows the passkey mix left alone); None when both are 0 (the
        corpus unchanged)."""
        s = self.settings
        split = self._train_split or self._setup_and_get("_train_split")
        mixes = [
            passkey_mix(s.passkey_fraction, self.tokenizer, s.seq_len, s.seed, split),
            recall_mix(s.recall_fraction, self.tokenizer, s.seq_len, s.seed, s.recall_pairs),
        ]
        mixes = [m for m in mixes if m is not None]
        return None if not mixes else mixes[0] if len(mixes) == 1 else FirstMix(*mixes)

    def train_dataset(self, rank: int | None = None, world_size: int | None = None) -> PackedWindows:
        """The unbounded training stream of ``rank``, starting after the windows already consumed."""
        split = self._train_split or self._setup_and_get("_train_split")
        return self._windows(split, rank, world_size, start_window=self._windows_consumed, mix=self.training_mix())

    def val_dataset(self, rank: int | None = None, world_size: int | None = None) -> PackedWindows:
        """The fixed validation windows: val_batches * batch_size windows spread evenly over the val split."""
        s = self.settings
        split = self._val_split or self._setup_and_get("_val_split")
        available = num_windows(split.n_tokens, s.seq_len)
        n_batches = min(s.val_batches, available // s.batch_size)
        if n_batches == 0:
            raise ValueError(
                f"the validation split has {split.n_tokens} tokens ({split.n_documents} documents): "
                f"{available} windows of seq_len + 1 = {s.seq_len + 1} tokens, fewer than batch_size={s.batch_size}; "
                f"raise val_fraction (now {s.val_fraction}; {self._how_val_grows()}) or lower seq_len/batch_size"
            )
        if n_batches < s.val_batches:
            log.warning(
                "validation split holds %d batches of %d x %d tokens; using %d, not val_batches=%d",
                n_batches,
                s.batch_size,
                s.seq_len + 1,
                n_batches,
                s.val_batches,
            )
        return self._windows(split, rank, world_size, windows=evenly_spaced(available, n_batches * s.batch_size))

    def mark_consumed(self, n: int = 1) -> None:
        """Record that ``n`` training batches (per rank) were used; the next iteration starts after them."""
        ds = self._train_ds
        world = ds.world_size if ds is not None else self._rank_world()[1]
        self._windows_consumed += n * world * self.settings.batch_size
        if ds is not None:
            ds.start_window = self._windows_consumed  # for a re-iteration (new epoch of the DataLoader)

    @property
    def windows_consumed(self) -> int:
        return self._windows_consumed

    # ------------------------------------------------------------------------------------------------------

    def _selection(self) -> Selection:
        s = self.settings
        return Selection(float(s.val_fraction), s.max_documents, s.max_bytes)

    def _prepare(self, checksums: bool = True) -> Prepared:
        if self._prepared is None:
            s = self.settings
            self._prepared = prepare(
                self.corpus,
                self._tok_spec,
                s.data_dir,
                self._selection(),
                num_proc=s.tokenize_workers,
                shard_tokens=s.shard_tokens,
                progress=s.progress and self._is_global_zero(),
                checksums=checksums,
            )
            self._tokenizer = self._prepared.tokenizer
            self._warn_if_bpe_fell_short()
        return self._prepared

    def _warn_if_bpe_fell_short(self) -> None:
        """'bpe:N' fixes the model's N embedding rows before the corpus is read (so every run of the spec builds the
        same model); a corpus with fewer distinct merges gives a smaller tokenizer, and the rows past it are never
        used. Said once, on rank zero, with the size that would fit."""
        learned, asked = self._tokenizer.vocab_size, self._tok_spec.vocab_size
        if self._tok_spec.kind == "bpe" and learned < asked and self._is_global_zero():
            log.warning(
                "data.tokenizer=%r learned only %d tokens from this corpus: the model keeps %d embedding rows, %d of "
                "them never used. 'bpe:%d' (or a larger corpus) fits it",
                self._tok_spec.spec,
                learned,
                asked,
                asked - learned,
                learned,
            )

    def _require_prepared(self) -> Prepared:
        if self._prepared is None:
            raise RuntimeError("call prepare_data() or setup() first")
        return self._prepared

    def _setup_and_get(self, attr: str) -> SplitReader:
        self.setup()
        return getattr(self, attr)

    def _windows(self, split: SplitReader, rank: int | None, world_size: int | None, **kw) -> PackedWindows:
        r, w = self._rank_world()
        s = self.settings
        rank, world_size = (r if rank is None else rank), (w if world_size is None else world_size)
        return PackedWindows(
            split, seq_len=s.seq_len, batch_size=s.batch_size, rank=rank, world_size=world_size, seed=s.seed, **kw
        )

    def _how_val_grows(self) -> str:
        if self._prepared is not None and self._prepared.manifest["split"].get("val_tail"):
            return "the corpus is one document, whose last val_fraction of tokens is the validation split"
        return "validation takes whole documents, chosen by a hash of their keys"

    def _rank_world(self) -> tuple[int, int]:
        """(data-parallel rank, data-parallel size): the ranks of one context-parallel group read one stream."""
        trainer = self.trainer
        if trainer is not None:
            split = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
            if split is not None:
                return split["rank"], split["num_replicas"]
            return trainer.global_rank, trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _is_global_zero(self) -> bool:
        trainer = self.trainer
        if trainer is not None:
            return trainer.is_global_zero
        return self._rank_world()[0] == 0

    def _loader(self, ds: PackedWindows) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=None,
            num_workers=self.settings.num_workers,
            pin_memory=self.settings.pin_memory and torch.cuda.is_available(),
            persistent_workers=False,  # workers must re-read start_window on re-iteration
            worker_init_fn=leave_stop_signals_to_the_trainer,
        )

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
            if self.settings.strict_resume:
                raise ValueError(
                    msg + " (pass --data.strict_resume false to continue at the same stream position anyway)"
                )
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
