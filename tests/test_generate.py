"""Generation: the KV cache computes the full model's logits, sampling draws from the documented set, streaming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import processors
from trained_models import arch_checkpoint, two_stage_checkpoints

from lighthouse.data.tokenizer import TextTokenizer, byte_tokenizer, train_bpe
from lighthouse.generate import GREEDY, Sampling, StreamDecoder, generate_tokens, main, prompt_ids, sample_next
from lighthouse.model.config import ModelConfig
from lighthouse.model.kv_cache import KVCache
from lighthouse.model.transformer import Transformer
from lighthouse.train import exits


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        **{
            "vocab_size": 257,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_hidden": 64,
            "seq_len": 16,
            "rope_theta": 100.0,
            **overrides,
        }
    )
    return Transformer(config).eval()


@pytest.mark.parametrize("chunks", [[24], [10, 14], [1] * 24, [7, 5, 1, 1, 10]], ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("kv_heads", [4, 1], ids=["mha", "gqa1"])
def test_cached_logits_equal_full_recompute(chunks, kv_heads):
    """Prefill, chunks that start mid-sequence (explicit causal mask) and single tokens; 24 positions run past
    seq_len=16, so the RoPE tables extend too."""
    model = tiny_model(n_kv_heads=kv_heads)
    tokens = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model.config, batch_size=2, max_len=24, device="cpu", dtype=torch.float32)
    pieces, start = [], 0
    with torch.no_grad():
        expected = model(tokens)
        for n in chunks:
            pieces.append(model(tokens[:, start : start + n], cache))
            start += n
    assert cache.length == 24
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_cache_is_dense_whatever_the_training_backend():
    sparse = tiny_model(
        attention="lighthouse_naive",
        seq_len=512,
        dense_layers=[0],
        lighthouse={"levels": 2, "pooling_factor": 4, "topk": 128},
    )
    dense = tiny_model(seq_len=512, dense_layers=[0])  # same seed: same weights
    tokens = torch.randint(0, 257, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = KVCache(sparse.config, 1, 20, "cpu", torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(sparse(tokens, cache), dense(tokens), atol=1e-5, rtol=1e-5)
    assert sparse.attention_backends == ["sdpa", "lighthouse_naive"]  # the cache did not switch the backend


def test_cache_refuses_positions_past_its_length():
    model = tiny_model()
    cache = KVCache(model.config, 1, 8, "cpu", torch.float32)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), cache)
        with pytest.raises(ValueError, match="6 cached \\+ 3 new"):
            model(torch.zeros(1, 3, dtype=torch.long), cache)
    assert cache.length == 6


def test_bf16_model_keeps_fp32_rope_tables():
    model = tiny_model()
    cos32, sin32 = (t.clone() for t in model.rope(16))
    model.bfloat16()
    cos, sin = model.rope(16)
    assert cos.dtype == sin.dtype == torch.float32
    assert torch.equal(cos, cos32) and torch.equal(sin, sin32)
    with torch.no_grad():
        assert model(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16


def test_greedy_tokens_equal_with_and_without_cache():
    model = tiny_model()
    prompt = [256, *b"def main("]
    cached = list(generate_tokens(model, prompt, 30))
    assert cached == list(generate_tokens(model, prompt, 30, use_cache=False))
    assert len(cached) == 30


def test_generation_stops_after_eos_and_never_draws_padding_ids():
    model = tiny_model(vocab_size=320)
    bias = torch.zeros(320)
    bias[257:] = 50.0  # the rows added by rounding the vocabulary up, made by far the most likely
    model.output.register_forward_hook(lambda module, inputs, logits: logits + bias)
    hot = Sampling(temperature=1.0, top_p=1.0)
    unmasked = list(generate_tokens(model, [65], 12, hot, generator=torch.Generator().manual_seed(0)))
    assert min(unmasked) >= 257  # without n_valid_ids the hook wins: the check below can fail
    out = list(generate_tokens(model, [65], 12, hot, n_valid_ids=257, generator=torch.Generator().manual_seed(0)))
    assert len(out) == 12 and max(out) < 257
    bias[256] = 100.0  # now EOS always wins
    assert list(generate_tokens(model, [65], 12, eos_id=256, n_valid_ids=257)) == [256]


def draws(logits: torch.Tensor, sampling: Sampling, n: int = 400) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    return {sample_next(logits, sampling, generator) for _ in range(n)}


def test_top_k_and_top_p_draw_from_the_documented_sets():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    assert draws(logits, Sampling(temperature=1.0, top_p=1.0)) == {0, 1, 2, 3}
    assert draws(logits, Sampling(temperature=1.0, top_k=3, top_p=1.0)) == {1, 2, 3}
    # Sorted: 0.5, 0.3, 0.15, 0.05. The mass before 0.15 is 0.8 >= 0.7, so it and 0.05 are dropped.
    assert draws(logits, Sampling(temperature=1.0, top_p=0.7)) == {1, 3}
    assert draws(logits, Sampling(temperature=1.0, top_p=0.01)) == {1}
    assert draws(logits, Sampling(temperature=1.0, top_k=1, top_p=1.0)) == {1}
    assert draws(logits, GREEDY, n=3) == {1}


@pytest.mark.parametrize("temperature", [1e-40, 1e-50, 5e-324], ids=["1e-40", "1e-50", "5e-324"])
def test_a_temperature_too_small_for_fp32_decodes_greedily(temperature):
    """logits / T overflows fp32 (to inf, NaN after softmax) long before sampling stops being greedy in the limit:
    such a T gives the argmax tokens, with the padding rows (-inf logits) and top-k / top-p still in force."""
    model = tiny_model(vocab_size=320)
    prompt = [256, *b"def main("]
    greedy = list(generate_tokens(model, prompt, 12, n_valid_ids=257))
    for cold in (Sampling(temperature), Sampling(temperature, top_k=3, top_p=1.0)):
        generator = torch.Generator().manual_seed(0)
        assert list(generate_tokens(model, prompt, 12, cold, n_valid_ids=257, generator=generator)) == greedy


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("sampling", [GREEDY, Sampling(1.0), Sampling(1e-40)], ids=["greedy", "T1", "T1e-40"])
def test_non_finite_logits_are_an_error_at_every_temperature(bad, sampling):
    """A broken model is not decoded: greedy took a NaN's index for a token, and a tiny T must not hide one."""
    logits = torch.tensor([0.5, bad, 2.0, float("-inf")])
    with pytest.raises(FloatingPointError, match=f"the model's logits are not finite \\(largest: {bad}\\)"):
        sample_next(logits, sampling, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad", [dict(temperature=-1.0), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_invalid_sampling_is_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Sampling(**bad)


def test_seed_decides_the_sample():
    model = tiny_model()
    hot = Sampling(temperature=1.5, top_p=1.0)

    def sample(seed: int) -> list[int]:
        return list(generate_tokens(model, [256], 24, hot, generator=torch.Generator().manual_seed(seed)))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_stream_decoder_holds_back_incomplete_utf8():
    text = "é€😀a\u0301 done"
    stream = StreamDecoder(byte_tokenizer())
    pieces = [stream.push(b) for b in text.encode("utf-8")] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert pieces[0] == "" and pieces[1] == "é"


def test_generate_command_streams_a_continuation(tmp_path_factory, capsys):
    """src/generate.py's main on a checkpoint written by the CLI: prompt, then the continuation, reproducibly."""
    ckpt = str(two_stage_checkpoints(tmp_path_factory)[2])
    capsys.readouterr()  # whatever training the checkpoint printed
    args = ["--ckpt", ckpt, "--prompt", "def main(", "--max-new-tokens", "16", "--seed", "3", "--device", "cpu"]
    main(args)
    first = capsys.readouterr()
    assert first.out.startswith("def main(") and len(first.out) > len("def main(\n")
    assert "tokens/s" in first.err and "cpu float32" in first.err
    main(args)
    assert capsys.readouterr().out == first.out
    main([*args, "--no-cache"])
    assert capsys.readouterr().out == first.out
    # A run folder: the checkpoint it picked is named on stderr (stdout stays the text alone).
    run = str(Path(ckpt).parents[1])
    main(["--ckpt", run, *args[2:]])
    picked = capsys.readouterr()
    assert picked.err.startswith(f"--ckpt {run}: generating from {run}/checkpoints/") and "--ckpt" not in picked.out
    assert picked.out.startswith("def main(")


GENERATE = ["--tokenizer", "byte", "--device", "cpu", "--max-new-tokens", "12"]


def test_a_temperature_too_small_for_fp32_prints_the_greedy_continuation(tmp_path_factory, capsys):
    """--temperature 1e-40 printed the prompt, then a traceback (probability tensor contains inf, nan...)."""
    ckpt = str(arch_checkpoint(tmp_path_factory, "mha-untied"))
    main(["--ckpt", ckpt, *GENERATE, "--prompt", "def main(", "--temperature", "0"])
    greedy = capsys.readouterr().out
    main(["--ckpt", ckpt, *GENERATE, "--prompt", "def main(", "--temperature", "1e-40"])
    assert capsys.readouterr().out == greedy


def usage_error(capsys, monkeypatch, args: list[str]) -> str:
    """The one error line of the command (exit code 2, no traceback)."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    capsys.readouterr()
    code = exits.run(main, args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(
            ["--seed", "99999999999999999999999"],
            "--seed=99999999999999999999999 is invalid: must be an integer in "
            "[-9223372036854775808, 18446744073709551615] (torch.manual_seed's range)",
            id="seed-past-2^64",
        ),
        pytest.param(
            ["--seed", str(-(2**63) - 1)],
            "--seed=-9223372036854775809 is invalid: must be an integer in "
            "[-9223372036854775808, 18446744073709551615] (torch.manual_seed's range)",
            id="seed-below-minus-2^63",
        ),
        pytest.param(
            ["--prompt", "", "--no-eos-prefix"],
            "--prompt='' is invalid: with --no-eos-prefix it must hold text (drop --no-eos-prefix to continue from "
            "EOS alone)",
            id="empty-prompt-no-eos",
        ),
        pytest.param(  # was a traceback from the first tensor moved there
            ["--device", "meta"],
            "--device='meta' is invalid: the tools run on 'cpu', 'cuda' or 'cuda:N' (and 'mps' on a Mac)",
            id="device-meta",
        ),
        pytest.param(
            ["--device", "mps"],
            "--device='mps' is invalid: this machine has no MPS device (use --device cpu)",
            id="device-mps-absent",
            marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS"),
        ),
    ],
)
def test_arguments_refused_before_the_checkpoint_is_read(args, message, tmp_path, capsys, monkeypatch):
    """The checkpoint does not exist: an error about it would mean the check came after the load."""
    line = usage_error(capsys, monkeypatch, ["--ckpt", str(tmp_path / "absent.ckpt"), *GENERATE, *args])
    assert line == f"error: {message}"


@pytest.mark.parametrize("seed", [-(2**63), 2**64 - 1], ids=["-2^63", "2^64-1"])
def test_the_ends_of_the_seed_range_are_used(seed, tmp_path_factory, capsys):
    ckpt = str(arch_checkpoint(tmp_path_factory, "mha-untied"))
    main(["--ckpt", ckpt, *GENERATE, "--prompt", "def", "--seed", str(seed), "--temperature", "1"])
    assert capsys.readouterr().out.startswith("def")


def test_a_prompt_that_tokenizes_to_nothing_names_the_flags(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """Known only once the tokenizer is read: here one that drops whitespace, given a prompt of a space."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"<|endoftext|>": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.save(str(tmp_path / "words.json"))
    ckpt = str(arch_checkpoint(tmp_path_factory, "mha-untied"))
    args = ["--ckpt", ckpt, "--tokenizer", str(tmp_path / "words.json"), "--device", "cpu", "--prompt", " "]
    line = usage_error(capsys, monkeypatch, [*args, "--no-eos-prefix"])
    assert line == (
        "error: --prompt=' ' is invalid: the tokenizer gives no tokens for it, and with --no-eos-prefix nothing is "
        "left to continue"
    )


def test_a_prompt_starts_like_a_training_document_bos_included():
    """An imported Llama tokenizer puts <s> before every document in the shards: the prompt gets it too, after the
    EOS (was: EOS then the text, a start the model never saw)."""
    tok = train_bpe(["def main(argv):\n    return argv\n" * 20], vocab_size=300).tok
    tok.add_special_tokens(["<s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 300)])
    tok = TextTokenizer(tok)
    assert tok.bos_id == 300
    document = [int(i) for i in tok.encode_documents(["def main("])[0]]
    assert document[0] == 300 and document[1:] == [int(i) for i in tok.encode("def main(")]
    assert prompt_ids(tok, "def main(") == [tok.eos_id, *document]
    assert prompt_ids(tok, "def main(", eos_prefix=False) == document
    byte = byte_tokenizer()
    assert prompt_ids(byte, "ab") == [256, 97, 98] and prompt_ids(byte, "ab", eos_prefix=False) == [97, 98]
