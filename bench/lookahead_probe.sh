#!/usr/bin/env bash
# Issue 26 on one GPU, in one device call: the look-ahead probe (lighthouse.eval.lookahead) and the per-window dense
# losses (lighthouse.eval.window_losses) of a Lighthouse checkpoint taken at the switch, where the report's
# "look-ahead" gap (val/loss - val/loss_dense, -0.40 to -0.58 at 32768) was measured.
#   bash bench/lookahead_probe.sh                 # trains compare_32k's Lighthouse arm (seed 0) to its switch at
#                                                 # step 200 (about 2.5 min), then probes that checkpoint
#   CKPT=path/to.ckpt bash bench/lookahead_probe.sh   # probes an existing checkpoint instead
# Everything lands in $OUT: lookahead_val.{txt,json} (all validation windows), lookahead_train.{txt,json}
# (PROBE_WINDOWS windows of the training split, for a smaller standard error), window_losses.json, probe.log.
set -uo pipefail
out=${OUT:-/tmp/lookahead_probe}
mkdir -p "$out"
log="$out/probe.log"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import jsonargparse" 2>/dev/null; then  # as device_round.sh: the CLI needs it
  python3 -m pip install -q --no-index --no-deps --upgrade --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
windows=${PROBE_WINDOWS:-32}

if [ -z "${CKPT:-}" ]; then
  config="$out/lighthouse_to_switch.yaml"
  python3 - "$config" <<'EOF'
import sys

import yaml

config = yaml.safe_load(open("bench/configs/compare_32k.yaml"))
# The compare arm's first 200 steps exactly (same seed, data, LR schedule over 320), stopped at its switch.
config["trainer"].update(max_steps=200, val_check_interval=200)
config["trainer"]["logger"]["init_args"].update(save_dir="logs/lookahead_probe", name="lighthouse-seed0")
config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 200
config["model"]["passkey"] = None  # not what this call measures
yaml.safe_dump(config, open(sys.argv[1], "w"), sort_keys=False)
EOF
  echo "=== train to the switch" | tee -a "$log"
  timeout 300 python3 src/train.py fit --config "$config" >>"$log" 2>&1
  echo "train rc=$?" | tee -a "$log"
  CKPT=$(ls logs/lookahead_probe/lighthouse-seed0/checkpoints/*.ckpt 2>/dev/null | tail -1)
  [ -n "$CKPT" ] || { echo "no checkpoint written; see $log" | tee -a "$log"; exit 1; }
  grep -E "val/loss|loss_dense" "$log" | tail -4
fi
echo "checkpoint: $CKPT" | tee -a "$log"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$log"
date -u +%Y-%m-%dT%H:%MZ | tee -a "$log"

echo "=== probe, validation split (every window it holds)" | tee -a "$log"
timeout 150 python3 -m lighthouse.eval.lookahead --ckpt "$CKPT" --windows 100000 --split val \
  --json "$out/lookahead_val.json" 2>>"$log" | tee "$out/lookahead_val.txt"
echo "=== probe, training split ($windows windows)" | tee -a "$log"
timeout 180 python3 -m lighthouse.eval.lookahead --ckpt "$CKPT" --windows "$windows" --split train \
  --json "$out/lookahead_train.json" 2>>"$log" | tee "$out/lookahead_train.txt"
echo "=== window losses" | tee -a "$log"
timeout 60 python3 -m lighthouse.eval.window_losses --ckpt "$CKPT" --windows 256 --out "$out/window_losses.json" \
  2>>"$log" | tee -a "$log"
