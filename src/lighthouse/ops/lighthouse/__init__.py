"""Lighthouse Attention ops: geometry, the plain-PyTorch reference and the Triton kernels."""

from .geometry import LighthouseGeometry, check_lighthouse_params, lighthouse_geometry, min_seq_len
from .interface import lighthouse_attention  # Triton path; kernels load on first call
from .naive import Selection, naive_lighthouse_attention, select_entries

__all__ = [
    "LighthouseGeometry",
    "Selection",
    "check_lighthouse_params",
    "lighthouse_attention",
    "lighthouse_geometry",
    "min_seq_len",
    "naive_lighthouse_attention",
    "select_entries",
]
