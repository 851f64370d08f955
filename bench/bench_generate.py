"""Generation speed on one GPU: prefill time of a long prompt and decode tokens/s with the KV cache.

    PYTHONPATH=src python bench/bench_generate.py        # paper-shaped model, 65536-token prompt, 256 new tokens
    PYTHONPATH=src python bench/bench_generate.py --prompt-len 16384 --new-tokens 128 --flavor small

Runs ``lighthouse.generate.generate_tokens`` exactly as src/generate.py does (bf16 weights, dense attention,
default sampling, one host sync per token for streaming), on random weights: speed does not depend on them.
Prefill = a call that generates 1 token; decode tokens/s = new_tokens / (time(1 + new_tokens) - time(1)).
Each time is the median of --reps calls with CUDA events, after warm-up. About a minute on an H200.
"""

from __future__ import annotations

import argparse
import datetime

import torch
from timing import cuda_time_ms

from lighthouse.generate import Sampling, generate_tokens
from lighthouse.model.config import model_flavor
from lighthouse.model.transformer import Transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flavor", default="paper")
    parser.add_argument("--prompt-len", type=int, default=65536)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_generate.py needs a CUDA GPU")

    torch.manual_seed(0)
    config = model_flavor(args.flavor, seq_len=args.prompt_len)
    model = Transformer(config).cuda().bfloat16().eval()
    prompt = torch.randint(0, config.vocab_size, (args.prompt_len,)).tolist()
    sampling = Sampling()  # src/generate.py's defaults

    def run(new_tokens: int) -> None:
        generator = torch.Generator(device="cuda").manual_seed(0)
        for _ in generate_tokens(model, prompt, new_tokens, sampling, generator=generator):
            pass  # every token reaches the host, as when streaming

    prefill_ms = cuda_time_ms(lambda: run(1), warmup=args.warmup, reps=args.reps)
    total_ms = cuda_time_ms(lambda: run(1 + args.new_tokens), warmup=args.warmup, reps=args.reps)
    decode_s = (total_ms - prefill_ms) / 1000
    cache_gib = 2 * config.n_layers * (args.prompt_len + args.new_tokens) * config.n_kv_heads * config.head_dim * 2
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {datetime.date.today()} | "
        f"flavor {args.flavor} ({model.num_params() / 1e6:.0f}M non-embedding params), bf16, batch 1"
    )
    print(
        f"prompt {args.prompt_len} tokens: prefill {prefill_ms:.1f} ms ({args.prompt_len / prefill_ms * 1e3:,.0f} "
        f"tokens/s); KV cache {cache_gib / 2**30:.2f} GiB"
    )
    print(
        f"decode {args.new_tokens} tokens after it: {decode_s * 1e3:.1f} ms, {args.new_tokens / decode_s:.1f} "
        f"tokens/s ({decode_s * 1e3 / args.new_tokens:.2f} ms/token)"
    )
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
