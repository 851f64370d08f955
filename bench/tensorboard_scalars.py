"""Scalars read back from a run's TensorBoard event files, for the benchmarks that drive src/train.py."""

from __future__ import annotations

from pathlib import Path


def logged_scalars(log_dir: Path, tag: str) -> dict[int, float]:
    """step -> value of the scalar ``tag`` in every event file under ``log_dir``; a newer file overrides an older
    one at the same step (a resumed run logs its steps again)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    by_step: dict[int, float] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*"), key=lambda f: f.stat().st_mtime):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every point
        events.Reload()
        if tag in events.Tags()["scalars"]:
            by_step.update((point.step, point.value) for point in events.Scalars(tag))
    return by_step
