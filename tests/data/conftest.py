"""Fixtures for the data tests (helpers live in datagen.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datagen import SIZES, write_corpus

from lighthouse.data.datamodule import LMDataModule


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus", SIZES)


@pytest.fixture
def make_dm(tmp_path: Path):
    def make(corpus, **kwargs) -> LMDataModule:
        kwargs = {
            "seq_len": 64,
            "batch_size": 2,
            "data_dir": str(tmp_path / "data"),
            "progress": False,
            "val_fraction": 0.2,
            "val_batches": 2,
            "tokenize_workers": 1,
            **kwargs,
        }
        return LMDataModule(corpus=str(corpus), **kwargs)

    return make
