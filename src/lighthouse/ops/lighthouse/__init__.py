"""Lighthouse Attention ops: geometry, the plain-PyTorch reference and the Triton kernels."""

from .geometry import LighthouseGeometry, Selection, check_lighthouse_params, lighthouse_geometry, min_seq_len
from .interface import lighthouse_attention, triton_select_entries  # Triton path; kernels load on first call
from .naive import naive_lighthouse_attention, select_entries

__all__ = [
    "LighthouseGeometry",
    "Selection",
    "check_lighthouse_params",
    "lighthouse_attention",
    "lighthouse_geometry",
    "min_seq_len",
    "naive_lighthouse_attention",
    "select_entries",
    "triton_select_entries",
]
