"""Data pipeline: corpus -> tokenizer -> binary shards -> packed, sharded, resumable window stream.

Import from the modules (``from lighthouse.data.datamodule import LMDataModule``): this package imports nothing, so
tokenization worker processes, which import only the torch-free modules, never pay for torch and Lightning.

    corpus.py      which files make up a corpus (safe walk)     documents.py  reading files into documents
    tokenizer.py   byte / BPE / file tokenizers, BPE training   packing.py    split rule, packing, order (the spec)
    shards.py      on-disk format: manifest, writer, reader     pool.py       ordered map over worker processes
    build.py       tokenize a corpus into one shard folder      cache.py      find / verify / (re)build the cache
    settings.py    the data module's settings and checks        stream.py     packed windows per rank and worker
    datamodule.py  the LightningDataModule (torch, Lightning)  installed.py  site folders, distributions, versions
    recall.py      key-value recall windows (training mix, eval)
"""
