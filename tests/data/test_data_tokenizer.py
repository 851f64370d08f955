"""Tokenizers: the byte fast path equals the `tokenizers` pipeline; BPE is trained and fingerprinted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lighthouse.data.tokenizer import (
    EOS_TOKEN,
    TextTokenizer,
    byte_tokenizer,
    parse_tokenizer_spec,
    train_bpe,
)

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=200) | st.sampled_from(
    [EOS_TOKEN, f"a{EOS_TOKEN}b", "é中🙂\x00\n\t", "Ġ ĠĠ", "<|endoftext|>"]
)


@settings(max_examples=200, deadline=None)
@given(text=TEXT)
def test_byte_fast_path_equals_tokenizers(text):
    tok = byte_tokenizer()
    fast = tok.encode(text)
    slow = tok.tok.encode(text, add_special_tokens=False).ids
    assert fast.tolist() == slow == list(text.encode("utf-8"))  # ids are the UTF-8 bytes, never EOS
    assert tok.decode(fast) == text


def test_byte_tokenizer_shape():
    tok = byte_tokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.is_byte, tok.dtype) == (257, 256, True, np.uint16)
    all_bytes = bytes(range(256)).decode("latin-1")
    assert tok.tok.encode(all_bytes, add_special_tokens=False).ids == list(all_bytes.encode("utf-8"))
    assert tok.fingerprint == byte_tokenizer().fingerprint and len(tok.fingerprint) == 16


def test_bpe_is_deterministic_and_round_trips():
    texts = ["def foo(x):\n    return x + 1\n" * 20, "class Bar:\n    pass\n" * 30, "é中🙂 " * 10]
    a, b = train_bpe(texts, 300), train_bpe(texts, 300)
    assert a.fingerprint == b.fingerprint and not a.is_byte
    assert a.eos_id == 0 and a.vocab_size <= 300
    s = f"def foo(y): return {EOS_TOKEN} + 'ünïcode'"
    ids = a.encode(s)
    assert len(ids) < len(s.encode()) and ids.max() < 300 and 0 not in ids.tolist()
    assert a.decode(ids) == s
    assert train_bpe(texts, 280).fingerprint != a.fingerprint


def test_tokenizer_file_spec(tmp_path):
    path = tmp_path / "tok.json"
    byte_tokenizer().save(path)
    spec = parse_tokenizer_spec(str(path))
    assert (spec.kind, spec.vocab_size, spec.eos_id) == ("file", 257, 256)
    assert TextTokenizer.from_file(path).is_byte  # same JSON, same fingerprint: the fast path applies
    no_eos = json.loads(path.read_text())
    no_eos["added_tokens"] = []
    (tmp_path / "bad.json").write_text(json.dumps(no_eos))
    with pytest.raises(ValueError, match="none of the EOS tokens"):
        parse_tokenizer_spec(str(tmp_path / "bad.json"))


@pytest.mark.parametrize("spec", ["bpe:10", "bpe:x", "wordpiece", "missing.json"])
def test_bad_tokenizer_specs(spec):
    with pytest.raises(ValueError, match=f"tokenizer='{spec}'"):
        parse_tokenizer_spec(spec)
