"""Tokenizers (from the ``tokenizers`` library): byte-level by default, BPE trained on the corpus on request.

Specs (the ``tokenizer=`` argument of the datamodule):

- ``"byte"``: 256 byte tokens (id = byte value) + EOS (id 256); vocab_size 257. The paper trains on bytes.
- ``"bpe:N"``: byte-level BPE with N tokens in all (EOS is id 0), trained on the train split of the corpus
  and saved under ``data/tokenizers/``; N is known before training, so ``vocab_size`` is available at once.
- ``"path/to/tokenizer.json"``: any saved ``tokenizers`` tokenizer holding one of the EOS tokens below.
- ``"hf:DIR"``: the tokenizer.json of a Hugging Face model folder (what ``model.init_from`` imports), with the
  BOS its tokenizer_config.json asks for (``add_bos_token``) made part of the tokenizer.

A tokenizer whose post-processor starts a sequence with a special token other than EOS (Llama's ``<s>`` or
``<|begin_of_text|>``) has a BOS: every document then starts with it, as the model was trained.

A tokenizer is identified by its fingerprint: a hash of its canonical JSON. Shards record it, and a
checkpoint should too, so data tokenized one way is never read as if tokenized another.
Special-token strings inside documents are encoded as plain text: a document cannot inject an EOS.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lighthouse.tool_args import write_text_atomic

EOS_TOKEN = "<|eos|>"
EOS_CANDIDATES = (EOS_TOKEN, "<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")
BPE_MIN_VOCAB = 258  # 256 byte symbols + EOS + at least one merge
BPE_MAX_VOCAB = 2**20  # 4x the largest vocabularies of released LMs (256k): beyond it, a typo's embedding table


@dataclass(frozen=True)
class TokenizerSpec:
    """A parsed ``tokenizer=`` argument: enough to know vocab_size and eos_id without any corpus."""

    spec: str
    kind: str  # "byte" | "bpe" | "file" | "hf"
    vocab_size: int
    eos_id: int
    path: str | None = None  # kind "file": the .json; kind "hf": the folder


def parse_tokenizer_spec(spec: str) -> TokenizerSpec:
    if spec == "byte":
        return TokenizerSpec(spec, "byte", 257, 256)
    if spec.startswith("bpe:"):
        try:
            n = int(spec[4:])
        except ValueError:
            n = -1
        if not BPE_MIN_VOCAB <= n <= BPE_MAX_VOCAB:
            raise ValueError(f"tokenizer={spec!r}: 'bpe:N' needs an integer N in [{BPE_MIN_VOCAB}, {BPE_MAX_VOCAB}]")
        return TokenizerSpec(spec, "bpe", n, 0)  # the trainer puts its special tokens first
    if spec.endswith(".json"):
        if not Path(spec).is_file():
            raise ValueError(f"tokenizer={spec!r}: no such tokenizer file")
        tok = TextTokenizer.from_file(spec)
        return TokenizerSpec(spec, "file", tok.vocab_size, tok.eos_id, spec)
    if spec.startswith("hf:"):
        tok = TextTokenizer.from_hf_folder(spec[3:])
        return TokenizerSpec(spec, "hf", tok.vocab_size, tok.eos_id, spec[3:])
    raise ValueError(
        f"tokenizer={spec!r}: valid values are 'byte', 'bpe:N' (e.g. 'bpe:8192'), a tokenizer .json file or "
        "'hf:DIR' (a Hugging Face model folder's tokenizer.json)"
    )


def bytes_to_unicode() -> dict[int, str]:
    """The ByteLevel pre-tokenizer's byte -> printable character map (GPT-2's): printable Latin-1 bytes map
    to themselves, the other 68 bytes to code points 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` + eos_id, vocab_size, fingerprint, fast encode."""

    def __init__(self, tok: Tokenizer):
        tok.encode_special_tokens = True  # "<|eos|>" inside a document is text, not a separator
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        eos = [t for t in EOS_CANDIDATES if tok.token_to_id(t) is not None]
        if not eos:
            raise ValueError(f"tokenizer has none of the EOS tokens {EOS_CANDIDATES}; add one as a special token")
        self.eos_token = eos[0]
        self.eos_id = tok.token_to_id(eos[0])
        self.bos_id = _bos_id(tok, self.eos_id)
        self.bos_token = None if self.bos_id is None else tok.id_to_token(self.bos_id)
        canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"))
        if self.bos_id is not None:
            # Documents are tokenized with a BOS first: shards made before BOS existed here must not match.
            canonical += f"\nbos={self.bos_id}"
        self.fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
        # The byte tokenizer maps UTF-8 bytes to ids one to one; numpy does that 1000x faster than the
        # Rust BPE loop with no merges. tests/data/test_tokenizer.py checks both paths agree.
        self.is_byte = self.fingerprint == _byte_fingerprint()
        self.dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32

    @classmethod
    def from_str(cls, s: str) -> TextTokenizer:
        return cls(Tokenizer.from_str(s))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as e:
            if isinstance(e, ValueError) and "EOS" in str(e):
                raise ValueError(f"tokenizer file {path}: {e}") from e
            raise ValueError(f"tokenizer file {path} could not be loaded: {e}") from e

    @classmethod
    def from_hf_folder(cls, folder: str | os.PathLike) -> TextTokenizer:
        """DIR/tokenizer.json, with the BOS that DIR/tokenizer_config.json asks for (``add_bos_token``, true by
        default for Llama's tokenizers when a bos_token is named) added to its post-processor if missing."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"tokenizer='hf:{folder}': {path} does not exist (a Hugging Face fast tokenizer's file)")
        tok = cls.from_file(path)
        settings_path = folder / "tokenizer_config.json"
        if tok.bos_id is not None or not settings_path.is_file():
            return tok
        try:
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{settings_path} is not valid JSON: {err}") from None
        bos = settings.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        if not settings.get("add_bos_token", True) or not isinstance(bos, str) or bos == tok.eos_token:
            return tok
        if tok.tok.token_to_id(bos) is None:
            raise ValueError(f"{settings_path}: bos_token={bos!r} is not in {path}'s vocabulary")
        tok.tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.tok.token_to_id(bos))]
        )
        return cls(tok.tok)

    def to_str(self) -> str:
        return self.tok.to_str()

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, self.to_str())

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each text (no special tokens added), in the smallest dtype that holds the vocab."""
        if self.is_byte:
            return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(self.dtype) for t in texts]
        # encode_batch_fast (tokenizers >= 0.20) skips character offsets: same ids, faster.
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [np.asarray(e.ids, dtype=self.dtype) for e in encode(list(texts), add_special_tokens=False)]

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of each document as the shards store it: BOS first when the tokenizer has one (the EOS that
        ends each document is the packer's)."""
        ids = self.encode_batch(texts)
        if self.bos_id is None:
            return ids
        bos = np.array([self.bos_id], dtype=self.dtype)
        return [np.concatenate([bos, t]) for t in ids]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def describe(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "eos_token": self.eos_token,
            "bos_id": self.bos_id,
            "byte_level": self.is_byte,
        }


def _bos_id(tok: Tokenizer, eos_id: int) -> int | None:
    """The special token the tokenizer's post-processor puts before a text (Llama's BOS), or None; an EOS there
    is not a BOS: documents already start right after one."""
    bare = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    if len(full) > len(bare) and full[1 : 1 + len(bare)] == bare and full[0] != eos_id:
        return full[0]
    return None


def _byte_level_tokenizer(use_regex: bool, vocab: dict[str, int] | None = None) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]) if vocab is not None else models.BPE())
    # use_regex=False: no split on spaces, so a byte tokenizer sees the document as one run of bytes.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    return tok


@lru_cache(maxsize=1)
def _byte_tokenizer_json() -> str:
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = _byte_level_tokenizer(use_regex=False, vocab=vocab)
    tok.add_special_tokens([EOS_TOKEN])  # id 256, after the 256 byte ids
    return tok.to_str()


@lru_cache(maxsize=1)
def _byte_fingerprint() -> str:
    canonical = json.dumps(json.loads(_byte_tokenizer_json()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def byte_tokenizer() -> TextTokenizer:
    return TextTokenizer.from_str(_byte_tokenizer_json())


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Byte-level BPE of ``vocab_size`` tokens in all, EOS first (id 0); deterministic for given texts."""
    tok = _byte_level_tokenizer(use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, seen in training or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    out = TextTokenizer(tok)
    assert out.eos_id == 0 and out.vocab_size <= vocab_size, (out.eos_id, out.vocab_size)
    return out
