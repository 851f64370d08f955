"""Evaluation and reading results back: passkey retrieval, plots, a run's logged scalars.

passkey.py   needle-in-a-haystack retrieval on any checkpoint (``python -m lighthouse.eval.passkey``)
recall.py    multi-query key-value recall per distance bin (``python -m lighthouse.eval.recall``)
plot.py      loss / throughput / loss-by-position PNGs (``python -m lighthouse.eval.plot RUN``)
run_logs.py  one reader of a run's TensorBoard scalars, notes and throughput records
"""
