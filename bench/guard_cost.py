"""What the non-finite guards cost: training steps with and without the per-step check, and one pre-save check.

    PYTHONPATH=src python bench/guard_cost.py                    # configs/demo.yaml's model, CPU or GPU
    PYTHONPATH=src python bench/guard_cost.py --flavor paper --seq-len 65536 --backend lighthouse   # on a GPU

A step is forward, backward, clip_grad_norm_ (the demo clips at 1.0, so the norm exists anyway) and AdamW. The
guarded step adds what ``lighthouse.checkpoint.guards.StepGuard`` does: an isfinite of the loss and of the norm,
the blow-up check (a median over the last 64 steps' loss and norm, a compare, a ring write, all on the device)
and one host sync. Steps run back to back and the clock is read after the last one, so a sync that stalls the
host's queue of kernels shows up in the time. On a CPU shared with other jobs, the A/B difference is noise; the
line "the guard's own work" is the upper bound there (a host sync is free on a CPU).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import yaml

from lighthouse.checkpoint.guards import StepGuard, checkpoint_state, non_finite_names
from lighthouse.model.config import ModelConfig, model_flavor
from lighthouse.model.transformer import Transformer


def demo_model_config(seq_len: int | None, backend: str | None) -> ModelConfig:
    demo = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.yaml")
    config = yaml.safe_load(open(demo))
    arch = dict(config["model"]["arch"], seq_len=seq_len or config["data"]["seq_len"])
    if backend:
        arch["attention"] = backend
    return ModelConfig(**arch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavor", default=None, help="a named model size instead of demo.yaml's model")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--backend", default=None)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.flavor:
        overrides = {"attention": args.backend} if args.backend else {}
        config = model_flavor(args.flavor, seq_len=args.seq_len or 65536, activation_checkpointing=True, **overrides)
    else:
        config = demo_model_config(args.seq_len, args.backend)
    model = Transformer(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (1, config.seq_len + 1), device=device)
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=device, reduce=lambda t, reduce_op: t),
        global_step=0,
        checkpoint_callback=None,
    )
    guard = StepGuard(uniform_loss=math.log(config.vocab_size))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(guarded: bool) -> None:
        with autocast:
            logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if guarded:
            guard.observe(loss)
            guard.check(trainer, norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(guarded: bool) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step(guarded)
        sync(device)
        return (time.perf_counter() - start) / args.steps * 1e3

    step(False)  # warm-up: allocator, kernels, optimizer state
    plain, guarded = [], []
    for _ in range(args.repeats):  # interleaved, so drift in a shared machine's speed hits both alike
        plain.append(timed(False))
        guarded.append(timed(True))
    loss, norm = torch.tensor(2.5, device=device), torch.tensor(0.7, device=device)
    sync(device)
    start = time.perf_counter()
    for _ in range(1000):
        guard.observe(loss)
        guard.check(trainer, norm)
    own = (time.perf_counter() - start) * 1e3  # ms per 1000 calls = us per call
    state = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    sync(device)
    start = time.perf_counter()
    assert non_finite_names(checkpoint_state(state)) == []
    save_check = (time.perf_counter() - start) * 1e3
    a, b = statistics.median(plain), statistics.median(guarded)
    print(
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
        f"model dim {config.dim} x {config.n_layers} layers, seq {config.seq_len}, {config.attention}"
    )
    print(
        f"step without the guard: {a:.1f} ms   with it: {b:.1f} ms   difference: {b - a:+.2f} ms "
        f"({(b - a) / a * 100:+.2f}%; medians of {args.repeats} x {args.steps} steps)"
    )
    print(f"the guard's own work (isfinite x2, blow-up medians, one sync, on an idle queue): {own:.0f} us per step")
    print(f"pre-save check of weights + optimizer state: {save_check:.1f} ms (once per checkpoint)")


if __name__ == "__main__":
    main()
