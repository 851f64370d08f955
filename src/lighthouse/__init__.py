"""Lighthouse Attention: long-context LM pre-training with hierarchical top-k compacted attention."""

__version__ = "0.1.0"
