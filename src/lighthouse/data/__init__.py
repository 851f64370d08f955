"""Data pipeline: corpus -> tokenizer -> binary shards -> packed, sharded, resumable window stream.

Attributes load on first use (PEP 562) so that tokenization worker processes, which import
``lighthouse.data.shards``, do not pay for importing torch and Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "LMDataModule": "datamodule",
    "PackedWindows": "stream",
    "SplitReader": "shards",
    "TextTokenizer": "tokenizer",
    "byte_tokenizer": "tokenizer",
    "load_manifest": "shards",
    "pack_documents": "packing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
