"""Passkey test: prompt layout, disjoint key sets, the one-forward scorer (copying model 1.0, untrained model at
chance), the training mix (deterministic per stream position, resume-safe, validation untouched)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from array_source import ArraySource
from training_helpers import write_text_corpus

from lighthouse.checkpoint.read import read_checkpoint
from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.passkey_format import PromptFormat, draw_key, is_validation_key, needle_offset, rng_for
from lighthouse.data.passkey_mix import PasskeyMix
from lighthouse.data.tokenizer import byte_tokenizer, train_bpe
from lighthouse.eval.passkey import PasskeyEval
from lighthouse.eval.passkey_prompts import PasskeyConfig, make_prompts
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer
from lighthouse.train.lit_module import LitLM

BYTES = byte_tokenizer()


def filler_source(n=5000, seed=0):
    words = "def return import class self value for while if else lambda 42 7 x y".split()
    rng = np.random.default_rng(seed)
    return ArraySource(BYTES.encode(" ".join(rng.choice(words, size=n // 4)))[:n])


def find_all(haystack: np.ndarray, needle: np.ndarray) -> list[int]:
    windows = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return np.flatnonzero((windows == needle).all(1)).tolist()


# ---- prompts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [200, 1000, 4096])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_document_has_exact_length_and_key_at_depth(length, depth):
    fmt = PromptFormat.from_tokenizer(BYTES, key_digits=5)
    filler_len = length + 1 - fmt.overhead
    filler = filler_source().read(0, filler_len)
    doc = fmt.document("07310", depth, filler)
    assert doc.shape == (length + 1,)
    key = fmt.key_tokens("07310")
    assert BYTES.decode(key) == "07310"
    # Twice in the needle, once as the answer (the doc's last tokens); the filler holds no such run.
    hits = find_all(doc, key)
    assert len(hits) == 3 and hits[-1] == length + 1 - 5
    start = needle_offset(depth, filler_len)
    assert hits[0] == start + len(fmt.needle[0])
    assert BYTES.decode(doc[start:]).startswith("\nThe pass key is 07310. Remember it. 07310 is the pass key.\n")
    assert BYTES.decode(doc).endswith("What is the pass key? The pass key is 07310")
    # The filler is kept whole and in order around the needle.
    needle_len = sum(map(len, fmt.needle)) + 2 * 5
    np.testing.assert_array_equal(
        np.concatenate([doc[:start], doc[start + needle_len : start + needle_len + filler_len - start]]), filler
    )


def test_eval_prompts_cover_the_grid_with_validation_keys():
    config = PasskeyConfig(lengths=[300, 600], depths=[0.0, 0.5, 1.0], samples=3)
    fmt = PromptFormat.from_tokenizer(BYTES, config.key_digits)
    cells, prompts = make_prompts(config, fmt, filler_source(), config.lengths)
    assert cells == [(n, d) for n in (300, 600) for d in (0.0, 0.5, 1.0)]
    assert [p.cell for p in prompts] == [c for c in range(6) for _ in range(3)]
    keys = []
    for p in prompts:
        length, depth = cells[p.cell]
        assert len(p.tokens) == length + 1
        key = BYTES.decode(p.tokens[-5:])
        assert key.isdigit() and is_validation_key(key)
        start = needle_offset(depth, length + 1 - fmt.overhead)
        assert BYTES.decode(p.tokens[start:]).startswith(f"\nThe pass key is {key}.")
        keys.append(key)
    assert len(set(keys)) == len(keys)  # every prompt its own key
    again = make_prompts(config, fmt, filler_source(), config.lengths)[1]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(prompts, again, strict=True))


def test_training_and_validation_keys_are_disjoint():
    # The rule partitions every key: check all 3-digit keys, and that draws respect it.
    every = ["".join(k) for k in itertools.product("0123456789", repeat=3)]
    val = {k for k in every if is_validation_key(k)}
    assert 0 < len(val) < len(every)
    rng = rng_for("test")
    assert all(draw_key(rng, 3, validation=True) in val for _ in range(300))
    assert not any(draw_key(rng, 3, validation=False) in val for _ in range(3000))
    # Over all 5-digit keys about a tenth are validation keys (the hash looks uniform).
    share = np.mean([is_validation_key(f"{k:05d}") for k in range(100_000)])
    assert share == pytest.approx(0.1, abs=0.005)
    # Training documents only ever hold training keys.
    fmt = PromptFormat.from_tokenizer(BYTES, 5)
    mix = PasskeyMix(1.0, fmt, seq_len=512, seed=3, filler=filler_source())
    keys = {BYTES.decode(mix.document(p)[-5:]) for p in range(400)}
    assert len(keys) > 390 and not any(is_validation_key(k) for k in keys)


def test_bpe_digits_are_single_tokens_the_scorer_controls(tmp_path):
    text = ["the pass key is 1234567 and 7654321 " * 40, "numbers 1111 2222 3333 4444 11 22 33 " * 40]
    bpe = train_bpe(text, vocab_size=400)
    assert len(bpe.encode("1234567")) < 7  # BPE would merge digits in running text ...
    fmt = PromptFormat.from_tokenizer(bpe, key_digits=7)
    key = fmt.key_tokens("1234567")
    assert len(key) == 7 and list(key) == [bpe.encode(d)[0] for d in "1234567"]  # ... the prompt does not
    doc = fmt.document("1234567", 0.5, np.asarray(bpe.encode("filler text " * 30), dtype=np.int64))
    assert bpe.decode(doc).endswith("The pass key is 1234567")


def test_tokenizer_that_splits_a_digit_is_refused():
    class TwoTokenSeven:
        def encode(self, text):
            return np.array([1, 2] if text == "7" else [3] * len(text))

    with pytest.raises(ValueError, match="digit 7 as 2 tokens"):
        PromptFormat.from_tokenizer(TwoTokenSeven(), 5)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(lengths=[50]), "lengths=\\[50\\] must be a non-empty list of integers in \\[1"),
        (dict(lengths=[8192]), "lengths=\\[8192\\] must be .* 4096\\]"),
        (dict(depths=[1.5]), "depths=\\[1.5\\] must be a non-empty list of fractions in \\[0, 1\\]"),
        (dict(samples=0), "samples=0 must be an integer >= 1"),
        (dict(key_digits=0), "key_digits=0 must be an integer in \\[1, 18\\]"),
    ],
)
def test_bad_passkey_settings_are_refused_by_the_module(bad, message):
    arch = ModelConfig(vocab_size=257, dim=32, n_layers=2, n_heads=2, ffn_hidden=64, seq_len=4096)
    with pytest.raises(ValueError, match="model.passkey." + message):
        LitLM(arch, passkey=PasskeyConfig(**bad))


# ---- scoring --------------------------------------------------------------------------------------------------
class InductionCopy(torch.nn.Module):
    """Predicts, at every position, the token that followed the earliest earlier occurrence of the last ``m``
    tokens (a perfect induction head): it copies the key from the needle, and nothing else."""

    def __init__(self, vocab, m=8, shift=0):
        super().__init__()
        self.vocab, self.m, self.shift = vocab, m, shift

    def forward(self, tokens):
        B, N = tokens.shape
        logits = torch.zeros(B, N, self.vocab)
        for b in range(B):
            seq = tokens[b].tolist()
            for t in range(N - 12, N):  # the key positions are the last few
                tail = seq[t - self.m + 1 : t + 1]
                for s in range(self.m - 1, t):
                    if seq[s - self.m + 1 : s + 1] == tail:
                        logits[b, t, seq[min(s + 1 + self.shift, N - 1)]] = 1.0
                        break
        return logits


def small_eval(samples=2, lengths=(300, 700)):
    return PasskeyEval(
        PasskeyConfig(lengths=list(lengths), depths=[0.0, 0.5, 1.0], samples=samples),
        BYTES,
        filler_source(),
        max_len=1024,
    )


def test_a_model_that_copies_the_key_scores_one():
    scores = small_eval().score(InductionCopy(257), torch.device("cpu"))
    assert scores.accuracy() == (1.0, 1.0)
    assert scores.counts[:, 2].tolist() == [2] * 6
    metrics = scores.metrics()
    assert metrics["val/passkey_acc"] == 1.0 and metrics["val/passkey_acc/700"] == 1.0
    assert metrics["val/passkey_cell/300_d50"] == 1.0


def test_a_copy_off_by_one_position_scores_zero():
    scores = small_eval().score(InductionCopy(257, shift=1), torch.device("cpu"))
    assert scores.accuracy()[0] == 0.0


def test_prompts_split_over_ranks_sum_to_the_whole_with_equal_forwards():
    evaluator = small_eval(samples=3)  # 9 prompts per length: 5 and 4 on two ranks
    evaluator.config.batch_tokens = 1402  # two prompts of 700 (+ 1) or four of 300 per forward
    copy = InductionCopy(257, shift=1)
    whole = evaluator.score(copy, torch.device("cpu")).counts
    parts, forwards = [], []
    for rank in range(2):
        shapes = []

        def counting(tokens, shapes=shapes):
            shapes.append(tuple(tokens.shape))
            return copy(tokens)

        parts.append(evaluator.score(counting, torch.device("cpu"), rank=rank, world_size=2).counts)
        forwards.append(shapes)
    np.testing.assert_array_equal(parts[0] + parts[1], whole)
    assert forwards[0] == forwards[1] == [(4, 300), (1, 300), (2, 700), (2, 700), (1, 700)]


def test_an_untrained_model_scores_at_chance():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=257, dim=32, n_layers=2, n_heads=2, ffn_hidden=64, seq_len=512))
    evaluator = PasskeyEval(
        PasskeyConfig(lengths=[160, 256], depths=[0.0, 0.25, 0.5, 0.75, 1.0], samples=20),
        BYTES,
        filler_source(),
        max_len=512,
    )
    scores = evaluator.score(model.eval(), torch.device("cpu"))
    trials = len(evaluator.prompts) * 5
    exact, digit = scores.accuracy()
    assert trials == 1000
    bound = 4.5 * math.sqrt(0.1 * 0.9 / trials)  # binomial, 4.5 sigma
    assert abs(digit - 0.1) < bound, digit
    assert exact <= 0.01


# ---- the training mix ---------------------------------------------------------------------------------------------
def test_mix_is_a_pure_function_of_seed_and_position():
    fmt = PromptFormat.from_tokenizer(BYTES, 5)
    source = filler_source()
    a, b = PasskeyMix(0.3, fmt, 512, seed=1, filler=source), PasskeyMix(0.3, fmt, 512, seed=1, filler=source)
    docs = [a.document(p) for p in range(1000)]
    chosen = [p for p, d in enumerate(docs) if d is not None]
    assert abs(len(chosen) / 1000 - 0.3) < 0.05
    assert all(np.array_equal(docs[p], b.document(p)) for p in chosen[:50])
    assert all(b.document(p) is None for p in range(1000) if p not in chosen)
    assert all(docs[p].shape == (513,) for p in chosen)
    other = PasskeyMix(0.3, fmt, 512, seed=2, filler=source)
    assert [p for p in range(1000) if other.document(p) is not None] != chosen


def test_mixed_training_stream_resumes_exactly_and_leaves_validation_alone(tmp_path):
    corpus = write_text_corpus(tmp_path / "corpus", n_docs=8)

    def datamodule(fraction):
        return LMDataModule(
            seq_len=256,
            batch_size=2,
            corpus=str(corpus),
            data_dir=str(tmp_path / "data"),
            progress=False,
            val_fraction=0.25,
            val_batches=2,
            tokenize_workers=1,
            passkey_fraction=fraction,
        )

    mixed, plain = datamodule(0.5), datamodule(0.0)
    batches = [mixed.train_dataset().batch(g)["tokens"] for g in range(6)]
    reference = [plain.train_dataset().batch(g)["tokens"] for g in range(6)]
    mix = mixed.train_dataset().mix
    replaced = 0
    for g in range(6):
        for b in range(2):
            doc = mix.document(g * 2 + b)
            expected = reference[g][b] if doc is None else torch.from_numpy(doc)
            assert torch.equal(batches[g][b], expected)
            replaced += doc is not None
    assert 0 < replaced < 12
    # Resumed after 2 batches (4 windows): the stream continues with the same windows.
    resumed = mixed.train_dataset()
    resumed.start_window = 4
    assert all(torch.equal(resumed.batch(g)["tokens"], batches[g + 2]) for g in range(4))
    assert all(
        torch.equal(a["tokens"], b["tokens"]) for a, b in zip(mixed.val_dataset(), plain.val_dataset(), strict=True)
    )


def test_bad_passkey_fraction_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"passkey_fraction=1.5 is invalid: must be a number in \[0, 1\]"):
        LMDataModule(corpus=str(write_text_corpus(tmp_path / "c", n_docs=2)), passkey_fraction=1.5)
    with pytest.raises(ValueError, match="seq_len=64 is too short for passkey documents"):
        PasskeyMix(0.5, PromptFormat.from_tokenizer(BYTES, 5), 64, 0, filler_source())


@pytest.mark.slow
def test_passkey_command_builds_the_data_module_the_run_trained_with(tmp_path_factory, monkeypatch, capsys):
    """The command reads the checkpoint's saved data settings field by field (DataSettings), so the filler comes
    from the run's own corpus and data folder, not from a default data module."""
    from trained_models import two_stage_checkpoints

    from lighthouse.data import datamodule as datamodule_module
    from lighthouse.eval.passkey import main as passkey_main

    ckpt = two_stage_checkpoints(tmp_path_factory)[2]
    saved = read_checkpoint(ckpt)["datamodule_hyper_parameters"]
    built = []
    original = datamodule_module.LMDataModule.setup

    def recording_setup(self, stage=None):
        built.append(self.settings)
        return original(self, stage)

    monkeypatch.setattr(datamodule_module.LMDataModule, "setup", recording_setup)
    passkey_main(["--ckpt", str(ckpt), "--lengths", "256", "--samples", "1", "--depths", "0.5", "--device", "cpu"])
    assert len(built) == 1
    for name in ("corpus", "data_dir", "seq_len", "seed", "batch_size"):
        assert getattr(built[0], name) == saved[name], name
    assert "| 256 |" in capsys.readouterr().out


@pytest.mark.slow
def test_passkey_takes_a_run_folder_as_the_other_tools_do(tmp_path_factory, tmp_path, capsys):
    """--ckpt RUN/last is the run's newest checkpoint that verifies (find_checkpoint), as in export, generate, recall
    and the look-ahead probe; before, a folder was refused with advice for sharded checkpoints."""
    from trained_models import two_stage_checkpoints

    from lighthouse.eval.passkey import main as passkey_main
    from lighthouse.train import exits

    newest = two_stage_checkpoints(tmp_path_factory)[2].parent / "last.ckpt"  # step 4
    out = tmp_path / "passkey.json"
    args = ["--ckpt", str(newest.parents[1] / "last"), "--lengths", "256", "--samples", "1", "--depths", "0.5"]
    assert exits.run(passkey_main, [*args, "--device", "cpu", "--json", str(out)]) == 0
    assert f"passkey, {newest} (step 4)" in capsys.readouterr().out
    assert json.loads(out.read_text())["ckpt"] == str(newest)
