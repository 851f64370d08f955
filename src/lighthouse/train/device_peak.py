"""Peak FLOP/s of the device a run trains on, and the compute dtype of Lightning's precision setting: the
denominator of MFU (the numerator, FLOPs per token, is lighthouse.model.flops). Here and not beside the FLOP count
because the lookup falls back to Lightning's table, and the model package imports no Lightning."""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendor datasheets, for the GPUs where Lightning's table
# (lightning.fabric.utilities.throughput.get_available_flops) does not give that figure: it finds no row for the
# name "NVIDIA H200" and lists the sparse figures for H200 SXM/NVL and H100 NVL, and it reads "L40S" as an L4.
# Matched in order against the lower-cased torch.cuda.get_device_name(); everything else comes from Lightning
# (H100 SXM 989, H100 PCIe 756, A100 312, ...).
PEAK_TFLOPS_OVERRIDES = (("h200 nvl", 835.0), ("h200", 989.0), ("h100 nvl", 835.0), ("l40s", 362.0))


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype matmuls run in under a Lightning precision setting ('bf16-mixed', '16-mixed', '32-true', ...)."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float64 if precision.startswith("64") else torch.float32


def peak_flops_per_device(override_tflops: float | None = None, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Peak FLOP/s of the current CUDA device for ``dtype``, or None where unknown (then MFU is not reported)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    if dtype in (torch.bfloat16, torch.float16):
        for key, tflops in PEAK_TFLOPS_OVERRIDES:
            if key in name:
                return tflops * 1e12
    from lightning.fabric.utilities.throughput import get_available_flops

    flops = get_available_flops(torch.device("cuda", torch.cuda.current_device()), dtype)
    return float(flops) if flops else None
