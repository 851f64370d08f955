"""LMDataModule: argument checks, interface, stdlib corpus, BPE, bad input, resume in a real Trainer."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from datagen import take, write_corpus

from lighthouse.data.corpus import stdlib_root
from lighthouse.data.datamodule import LMDataModule


@pytest.mark.parametrize(
    "field,value",
    [
        ("seq_len", 0),
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("num_workers", -1),
        ("val_fraction", 0.0),
        ("val_fraction", 1.0),
        ("val_batches", 0),
        ("max_documents", 0),
        ("max_bytes", -5),
        ("tokenize_workers", 0),
        ("vocab_multiple_of", 0),
        ("shard_tokens", 0),
        ("seq_len", True),
        ("text_field", ""),
    ],
    ids=lambda v: str(v),
)
def test_bad_arguments_name_the_field_and_the_range(field, value, tmp_path):
    with pytest.raises(ValueError, match="^" + re.escape(f"data.{field}={value!r} is invalid: must be")):
        LMDataModule(**{field: value}, data_dir=str(tmp_path))


def test_bad_corpus_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.csv").write_text("a,b")
    cases = {
        str(tmp_path / "missing"): "no such file or directory",
        str(tmp_path / "empty"): "holds no .txt",
        str(tmp_path / "other"): "holds no .txt",
        str(tmp_path / "*.txt"): "matches no files",
        "hf:": "expected 'hf:NAME'",
    }
    for corpus, message in cases.items():
        with pytest.raises(ValueError, match="^" + re.escape(f"data.corpus='{corpus}'") + ".*" + re.escape(message)):
            LMDataModule(corpus=corpus, data_dir=str(tmp_path))


@pytest.mark.parametrize("spec", ["bpe:10", "bpe:2000000", "wordpiece", "missing.json"])
def test_a_bad_tokenizer_is_named_by_its_cli_key(spec, tmp_path):
    with pytest.raises(ValueError, match="^" + re.escape(f"data.tokenizer='{spec}': ")):
        LMDataModule(tokenizer=spec, data_dir=str(tmp_path))


def test_vocab_and_eos_are_known_at_init(tmp_path):
    assert (LMDataModule().vocab_size, LMDataModule().eos_id) == (257, 256)
    assert LMDataModule(vocab_multiple_of=64).vocab_size == 320
    bpe = LMDataModule(tokenizer="bpe:8192", data_dir=str(tmp_path))
    assert (bpe.vocab_size, bpe.eos_id) == (8192, 0)
    assert not (tmp_path / "tokenizers").exists()  # nothing trained or read yet


def test_bpe_tokenizer_is_trained_saved_and_reused(corpus_dir, make_dm, tmp_path):
    dm = make_dm(corpus_dir, tokenizer="bpe:300")
    dm.setup("fit")
    (saved,) = (tmp_path / "data" / "tokenizers").glob("bpe300-*.json")
    assert dm.manifest["tokenizer"]["fingerprint"] == dm.tokenizer_fingerprint
    (batch,) = take(dm.train_dataloader(), 1)
    assert batch["tokens"].max() < 300 and dm.decode(batch["tokens"][0]).strip()
    mtime = saved.stat().st_mtime_ns
    again = make_dm(corpus_dir, tokenizer="bpe:300")
    assert again.tokenizer_fingerprint == dm.tokenizer_fingerprint and saved.stat().st_mtime_ns == mtime
    # the same tokenizer given as a file reads the same shards
    as_file = make_dm(corpus_dir, tokenizer=str(saved))
    as_file.setup("fit")
    assert as_file.data_fingerprint == dm.data_fingerprint


def test_a_bpe_larger_than_the_corpus_supports_is_said_with_the_size_that_fits(corpus_dir, make_dm, caplog):
    """bpe:N fixes the model's embedding rows before the corpus is read; a corpus with fewer merges leaves rows that
    are never used (a probe's bpe:100000 on 480 KB: 374 tokens learned, a 100000-row model, no word)."""
    dm = make_dm(corpus_dir, tokenizer="bpe:60000")
    with caplog.at_level("WARNING", logger="lighthouse.data.datamodule"):
        dm.setup("fit")
    learned = dm.tokenizer.vocab_size
    assert learned < 60000 and dm.vocab_size == 60000
    said = [r.getMessage() for r in caplog.records if "learned only" in r.getMessage()]
    assert said == [
        f"data.tokenizer='bpe:60000' learned only {learned} tokens from this corpus: the model keeps 60000 embedding "
        f"rows, {60000 - learned} of them never used. 'bpe:{learned}' (or a larger corpus) fits it"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="lighthouse.data.datamodule"):
        make_dm(corpus_dir, tokenizer="bpe:300").setup("fit")  # learned in full: nothing to say
    assert not [r for r in caplog.records if "learned only" in r.getMessage()]


def test_stdlib_corpus_small(tmp_path):
    dm = LMDataModule(
        seq_len=512,
        batch_size=2,
        data_dir=str(tmp_path),
        max_documents=25,
        val_fraction=0.2,
        val_batches=1,
        progress=False,
    )
    dm.setup("fit")
    m = dm.manifest
    root = stdlib_root()
    assert m["corpus"]["kind"] == "stdlib" and m["corpus"]["python"]
    used = [f for f in m["files"] if f["documents"]]
    assert sum(f["documents"] for f in m["files"]) == 25 and len(used) == 25
    for f in m["files"]:
        assert hashlib.sha256((root / f["path"]).read_bytes()).hexdigest() == f["sha256"]
        assert f["path"].endswith(".py") and "site-packages" not in f["path"]
    assert [f["path"] for f in m["files"]] == sorted(f["path"] for f in m["files"])
    n_tokens = sum(s["tokens"] for s in m["splits"].values())
    assert n_tokens == sum((root / f["path"]).stat().st_size + 1 for f in used)  # bytes + one EOS each
    (batch,) = take(dm.train_dataloader(), 1)
    assert batch["tokens"].shape == (2, 513) and list(batch) == ["tokens"]
    text = dm.decode(batch["tokens"][0])
    assert any(word in text for word in ("def ", "import ", "class ", "return", "#"))
    assert len(list(dm.val_dataloader())) == 1
    # the same interpreter gives the same data
    again = LMDataModule(
        seq_len=512,
        batch_size=2,
        data_dir=str(tmp_path / "other"),
        max_documents=25,
        val_fraction=0.2,
        progress=False,
    )
    again.setup("fit")
    assert again.data_fingerprint == dm.data_fingerprint


def test_corpus_smaller_than_one_window(tmp_path):
    corpus = write_corpus(tmp_path / "c", [3, 3, 3])
    dm = LMDataModule(corpus=str(corpus), seq_len=4096, data_dir=str(tmp_path / "d"), progress=False)
    with pytest.raises(ValueError, match=r"train split .* fewer than seq_len \+ 1 = 4097: lower seq_len"):
        dm.setup("fit")


def test_validation_split_too_small(corpus_dir, make_dm):
    dm = make_dm(corpus_dir, seq_len=64, batch_size=2, val_fraction=0.01)
    dm.setup("fit")
    take(dm.train_dataloader(), 1)  # training works; only validation cannot
    with pytest.raises(ValueError, match=r"validation split .* fewer than batch_size=2; raise val_fraction"):
        dm.val_dataloader()


def test_a_corpus_of_one_long_document_trains_and_validates(tmp_path, make_dm):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "book.txt").write_text("".join(f"sentence {i} of a long book. " for i in range(3000)))
    dm = make_dm(tmp_path / "one", seq_len=256, batch_size=2, val_fraction=0.05, val_batches=2)
    dm.setup("fit")
    assert dm.manifest["split"]["val_tail"]["key"] == "book.txt"
    train, val = take(dm.train_dataloader(), 3), list(dm.val_dataloader())
    assert len(train) == 3 and len(val) == 2
    held_out = {row.numpy().tobytes() for b in val for row in b["tokens"]}
    assert not held_out & {row.numpy().tobytes() for b in train for row in b["tokens"]}
    # Too small a tail: the message says what helps, and why val_fraction does.
    small = make_dm(tmp_path / "one", seq_len=256, batch_size=2, val_fraction=0.001, data_dir=str(tmp_path / "d2"))
    small.setup("fit")
    with pytest.raises(ValueError, match=r"raise val_fraction \(now 0.001; the corpus is one document, whose last"):
        small.val_dataloader()


def test_every_setting_has_a_docstring_and_a_check():
    import ast
    import inspect
    from dataclasses import fields

    from lighthouse.data.settings import DataSettings, _rules

    tree = ast.parse(inspect.getsource(DataSettings))
    body = tree.body[0].body
    documented = {
        node.target.id
        for node, after in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
    }
    names = [f.name for f in fields(DataSettings)]
    assert documented == set(names) and all(_rules(DataSettings)[n] for n in names)
    assert "return_doc_ids" not in names  # removed: nothing consumed document ids


def test_cli_help_shows_each_data_setting_with_its_documentation(capsys):
    from lighthouse.train.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "--data.seq_len SEQ_LEN Tokens per training sequence; each window holds seq_len + 1 tokens" in text
    assert "--data.strict_resume {true,false} On resume, refuse a checkpoint whose data" in text


# ----------------------------------------------------------------------------------------------------------
# Resume inside a real Trainer, with gradient accumulation, validation and workers


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["tokens"].clone())
        return self.w * batch["tokens"].float().mean()

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(dm, max_steps, root, ckpt_path=None, callbacks=()):
    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=2,
        val_check_interval=3,
        num_sanity_val_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        default_root_dir=str(root),
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


def test_trainer_resume_sees_the_same_batches(corpus_dir, make_dm, tmp_path):
    straight = fit(make_dm(corpus_dir), 5, tmp_path / "a")
    assert len(straight) == 10  # 5 optimizer steps x 2 micro-batches

    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = fit(make_dm(corpus_dir, num_workers=2), 3, tmp_path / "b", callbacks=[ckpt])
    step2 = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    state = torch.load(step2, weights_only=False)["LMDataModule"]
    assert state["windows_consumed"] == 4 * 2  # 4 micro-batches of 2 windows, counted in on_train_batch_end
    ckpt2 = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    resumed = fit(make_dm(corpus_dir, num_workers=2), 5, tmp_path / "c", ckpt_path=str(step2), callbacks=[ckpt2])
    got = first[:4] + resumed
    assert len(got) == len(straight)
    assert all(torch.equal(a, b) for a, b in zip(got, straight, strict=True))
    manifest = json.loads((Path(tmp_path / "c") / "data_manifest.json").read_text())
    assert manifest["data_fingerprint"] == make_dm(corpus_dir)._prepare().manifest["data_fingerprint"]
