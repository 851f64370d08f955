"""Attention ops, one package each (``lighthouse/``: the Lighthouse layer), usable without the model."""
