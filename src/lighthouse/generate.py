"""Text generation from a trained checkpoint: KV-cached dense decoding, temperature/top-k/top-p sampling, streaming.

python src/generate.py --ckpt logs/demo --prompt "def main(" --max-new-tokens 200
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lighthouse.checkpoint.read import load_trained
from lighthouse.data.tokenizer import TextTokenizer
from lighthouse.model.kv_cache import KVCache
from lighthouse.model.transformer import Transformer
from lighthouse.tool_args import checked_device, entry_point, finite_at_least, int_in, local_path, require, summary


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn from the logits (the export writes these as generation_config.json)."""

    temperature: float = 0.8
    """Logits are divided by it; 0 means greedy (argmax), which is also what one too small for fp32 gives."""
    top_k: int | None = None
    """Sample among the k most likely tokens only; None means all."""
    top_p: float = 0.95
    """Sample from the smallest set of most likely tokens whose probability reaches top_p (nucleus); 1 = all."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k} must be >= 1 or None")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must lie in (0, 1]")


GREEDY = Sampling(temperature=0.0, top_p=1.0)


def sample_next(logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> int:
    """Next token id from ``logits`` ``[V]`` (fp32); a NaN or +inf among them (a broken model) raises."""
    best = logits.max()  # NaN where any logit is NaN
    if not torch.isfinite(best):  # argmax would return the NaN's index as if it were a token
        raise FloatingPointError(f"the model's logits are not finite (largest: {best.item()}): nothing to sample")
    if sampling.temperature == 0:
        return int(logits.argmax())
    # As T -> 0, softmax(logits / T) gives each token exp(-(best - logit) / T) -> 0 relative to the most likely one:
    # sampling tends to greedy. Shifted so the largest is 0, a T so small that logits / T would overflow to inf (NaN
    # after softmax) sends the others to -inf instead: probability 0, that limit. float64 so that any positive T
    # stays positive here (fp32 rounds 1e-50 to 0, and 0 / 0 is NaN).
    logits = (logits.double() - best) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs, order = torch.softmax(logits, dim=-1).sort(descending=True)
    if sampling.top_p < 1:
        # Drop a token once the more likely ones before it already reach top_p; the most likely always stays.
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= sampling.top_p, 0.0)
    return int(order[torch.multinomial(probs, 1, generator=generator)])


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    *,
    eos_id: int | None = None,
    n_valid_ids: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` ids continuing ``prompt`` (stops after ``eos_id``), one at a time.

    ``n_valid_ids``: ids from it up (embedding rows added by rounding the vocabulary up) are never drawn.
    ``use_cache=False`` recomputes the whole sequence at every step: slow, the reference the cache must equal.
    """
    if not prompt:
        raise ValueError("the prompt must hold at least one token (generate.py starts it with EOS by default)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    weight = model.output.weight
    tokens = torch.tensor([list(prompt)], device=weight.device)  # [1, N]
    cache = KVCache(model.config, 1, len(prompt) + max_new_tokens, weight.device, weight.dtype) if use_cache else None
    hidden = model.features(tokens, cache)[:, -1]  # [1, dim]
    for step in range(max_new_tokens):
        logits = model.output(hidden)[0].float()  # [V]
        if n_valid_ids is not None:
            logits[n_valid_ids:] = float("-inf")
        token = sample_next(logits, sampling, generator)
        yield token
        if token == eos_id or step == max_new_tokens - 1:
            return
        new = torch.tensor([[token]], device=weight.device)
        if cache is None:
            tokens = torch.cat([tokens, new], dim=1)
            hidden = model.features(tokens)[:, -1]
        else:
            hidden = model.features(new, cache)[:, -1]


class StreamDecoder:
    """Token ids in, printable text out, holding back the bytes of a UTF-8 character that is not complete yet
    (a byte-level model emits one byte per token, so 'é' arrives in two)."""

    MAX_PENDING = 4  # a UTF-8 character has at most 4 bytes, and every token at least one

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending, skip_special_tokens=True)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending, skip_special_tokens=True), []
        return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default = Sampling()
    p = argparse.ArgumentParser(description=summary(__doc__))
    p.add_argument(
        "--ckpt", required=True, help="a .ckpt written by src/train.py (either stage), a run folder or a run name"
    )
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=default.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=default.top_k, help="keep the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=default.top_p, help="nucleus sampling mass, (0, 1]")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument(
        "--tokenizer",
        default=None,
        help="'byte' or a tokenizer .json, for checkpoints that do not carry their tokenizer",
    )
    p.add_argument(
        "--no-eos-prefix",
        action="store_true",
        help="do not start the prompt with EOS (training saw every document right after an EOS)",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute every step instead of the KV cache (slow)")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every range checked before the checkpoint is read, each error naming its flag."""
    finite_at_least("--temperature", args.temperature, 0.0, " (0 = greedy)")
    require(math.isfinite(args.top_p) and 0 < args.top_p <= 1, "--top-p", args.top_p, "must lie in (0, 1]")
    if args.top_k is not None:
        int_in("--top-k", args.top_k, 1, why=" (omit it to keep all tokens)")
    int_in("--max-new-tokens", args.max_new_tokens, 1)
    int_in("--seed", args.seed, -(2**63), 2**64 - 1, " (torch.manual_seed's range)")
    # Known without the tokenizer: no EOS and no text leave no token to continue (text may still tokenize to none).
    require(
        bool(args.prompt) or not args.no_eos_prefix,
        "--prompt",
        args.prompt,
        "with --no-eos-prefix it must hold text (drop --no-eos-prefix to continue from EOS alone)",
    )
    local_path("--ckpt", args.ckpt)


def check_length(model: Transformer, n_prompt: int, max_new_tokens: int) -> None:
    """Prompt and continuation must fit the context the model was trained for: past it the KV cache grows without
    bound (10^9 new tokens would ask for hundreds of GB) and the model has never seen such positions."""
    context = model.config.seq_len
    room = context - n_prompt
    if room < 1:
        raise ValueError(f"--prompt is {n_prompt} tokens: the model's context is {context}, so it must be shorter")
    int_in("--max-new-tokens", max_new_tokens, 1, room, f" (the context {context} minus the {n_prompt} prompt tokens)")


def prompt_ids(tok: TextTokenizer, text: str, eos_prefix: bool = True) -> list[int]:
    """``text`` as the model saw a document's start in training: after the EOS that ended the one before, and from
    its BOS where the tokenizer has one (an imported Llama's ``<s>``; the shards store every document so)."""
    return ([tok.eos_id] if eos_prefix else []) + [int(i) for i in tok.encode_documents([text])[0]]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_args(args)
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    device = checked_device("--device", args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32
    )
    from lighthouse.train.run_dir import find_checkpoint  # --ckpt logs/demo: that run's newest verified checkpoint

    ckpt = find_checkpoint(args.ckpt)
    if str(ckpt) != args.ckpt:  # on stderr: stdout is the text
        print(f"--ckpt {args.ckpt}: generating from {ckpt}", file=sys.stderr)
    _, model, tok = load_trained(ckpt, args.tokenizer)
    prompt = prompt_ids(tok, args.prompt, eos_prefix=not args.no_eos_prefix)
    require(
        bool(prompt),
        "--prompt",
        args.prompt,
        "the tokenizer gives no tokens for it, and with --no-eos-prefix nothing is left to continue",
    )
    check_length(model, len(prompt), args.max_new_tokens)
    model.to(device=device, dtype=dtype)  # RoPE tables stay fp32 (Transformer.rope)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    stream = StreamDecoder(tok)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    start, n = time.perf_counter(), 0
    for token in generate_tokens(
        model,
        prompt,
        args.max_new_tokens,
        sampling,
        eos_id=tok.eos_id,
        n_valid_ids=tok.vocab_size,
        use_cache=not args.no_cache,
        generator=generator,
    ):
        n += 1
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    seconds = time.perf_counter() - start
    print(
        f"[{n} tokens in {seconds:.2f} s, {n / seconds:.1f} tokens/s, {device.type} {str(dtype)[6:]}]", file=sys.stderr
    )


if __name__ == "__main__":
    entry_point(main)
