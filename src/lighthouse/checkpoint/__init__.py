"""Checkpoints: written atomically with a checksum, verified on read, never holding non-finite weights.

io.py       AtomicCheckpointIO (write, verify, weights-only load; local or remote)
files.py    checksum sidecars, verdicts, the newest usable checkpoint of a folder
records.py  what LitLM writes into every checkpoint (model config, tokenizer), read back for every version
read.py     reading a trained model back (export, generate, eval, LitLM.load_from_checkpoint)
last.py     saving the step reached on a stop          resume.py   what may change when a run resumes
guards.py   finite checks on losses, gradients and checkpoint state
"""
