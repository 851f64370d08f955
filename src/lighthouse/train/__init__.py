"""Training with Lightning: the LightningModule, its callbacks, the CLI and everything a launch needs.

cli.py          LighthouseCLI: ``lighthouse fit --config ...``; adds the callbacks and safety below
lit_module.py   LitLM: steps, loss, optimizer and LR schedule
schedule.py     the phases of a run (attention per step range, the LR clock), plain data
stage.py        StageSwitch: runs the phases, keeps the phase record in checkpoints
throughput.py   ThroughputRecorder: tokens/s, MFU, memory per timing window and phase
device_peak.py  the device's peak FLOP/s (MFU's denominator) and the compute dtype of a precision
run_dir.py      one folder per run under logs/          logger.py       the TensorBoard logger of that folder
preflight.py    checks before the first step            safety.py       the callbacks every fit gets
exits.py        exit codes and one-line user errors     time_budget.py  stop and save before a wall-clock limit
progress.py     the console progress line               distributed.py  FSDP and context-parallel strategies
run_loggers.py  W&B / MLflow loggers in that folder      arg_errors.py   a config typo as one line
compat.py       the torch / Lightning versions needed
"""
