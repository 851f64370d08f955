#!/usr/bin/env bash
# The H200 measurements behind bench/RESULTS.md, in parts that each fit one 10-minute device call:
#   bash bench/device_round.sh kernels   # GPU tests, layer timings (now and, if .devold/ holds an older
#                                        # checkout's src+bench, before), generation speed, 262144 memory rows
#   bash bench/device_round.sh tests     # the GPU-marked tests, every op test on CUDA, the layer timings with
#                                        # the causal selection (~3 min)
#   bash bench/device_round.sh long      # lh_1m through the CLI, model rows at 524288 and 1048576
#   bash bench/device_round.sh table     # the paper model, dense and Lighthouse, at 16384 (K=512), 65536, 131072
#   bash bench/device_round.sh offload   # checkpoint_offload at 262144 (with the host's peak memory)
#   bash bench/device_round.sh check     # GPU tests, layer timings (32768-262144) and the GQA / dilated rows
#   bash bench/device_round.sh pilot     # recall learnability: PILOT_CONFIG's (bench/configs/branch_32k.yaml) dense
#                                        # warm-up for PILOT_STEPS (300) steps; its run folder (no checkpoints) to
#                                        # $OUT/pilot.tgz (PILOT_CONFIG=bench/configs/recall_pilot_8k.yaml: the dense
#                                        # recall mix at 8192, bench/recall_findings.md)
#   bash bench/device_round.sh compare bench/configs/compare_32k.yaml --seeds 1 2 --steps 320
#   bash bench/device_round.sh compare bench/configs/compare_32k.yaml --out logs/compare_32k_pass --seeds 3 --steps pass
#       # as much of a comparison as fits the call (exit code 3: not done; call again at once, while the machine
#       # is warm, since the comparison folder lives on its disk); every call exports it to $OUT/<name>.tgz
#   bash bench/device_round.sh branch bench/configs/branch_32k.yaml --seed 0 [--steps 800] [--arms D LHc LH E]
#       # one seed of the branch design (bench/branch.py; with --warmup 0 the from-scratch design): as much as fits
#       # the call (exit code 3: not done; call again at once, while the machine is warm: checkpoints live on its
#       # disk only); every call exports the seed folder without checkpoints to
#       # $OUT/<config name>[-scratch]-seed<N>.tgz (for bench/report/runs/), and again as each arm is done; save it
#       # as bench/report/runs/partial/<that name>.tgz after every call that exits 3, and the same command
#       # continues the seed from it when the machine went (--resume-from, unless given): finished arms are kept,
#       # an arm cut off mid-run starts over, and a branch seed (warm-up > 0) whose warm-up checkpoint went with the
#       # machine trains its deterministic warm-up again (~4 min at 32768) and branches its pending arms from it
#       # only if it is bitwise the recorded one (exit 2 if not); so a seed can span sessions: commit the partial
# Everything goes to one log, $OUT/<part>.log (the device tool brings back few files). Each step has its own
# time limit, cut to what is left of DEADLINE_S (default 570 s from the start), so that one slow step cannot take
# the others' results with it and the call ends inside the tool's 10 minutes.
set -uo pipefail
part=${1:?usage: device_round.sh kernels|tests|long|table|offload|check|pilot|compare CONFIG [compare.py run args]|branch CONFIG --seed N [branch.py run args]}
out=${OUT:-/tmp/device_round}
mkdir -p "$out"
log="$out/$part.log"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c "import jsonargparse" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site
fi
site=${PYTHONPATH:-}
deadline=$(($(date +%s) + ${DEADLINE_S:-570}))

step() {  # step NAME SECONDS PYTHONPATH_SRC COMMAND...
  local name=$1 limit=$2 src=$3 start rc
  shift 3
  start=$(date +%s)
  if ((deadline - start < limit)); then limit=$((deadline - start)); fi
  if ((limit < 20)); then echo "$name skipped: no time left" | tee -a "$log"; return; fi
  echo "=== $name (limit ${limit}s)" >>"$log"
  PYTHONPATH=${site:+$site:}$PWD/$src timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "=== $name rc=$rc $(($(date +%s) - start))s" >>"$log"
  echo "$name rc=$rc $(($(date +%s) - start))s"
}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'triton', triton.__version__,
  'lightning', lightning.__version__)"; git log -1 --format='commit %h %s' 2>/dev/null; } >>"$log" 2>&1

case $part in
kernels)
  if [ -d .devold/src ]; then
    step layer_before 70 .devold/src python3 .devold/bench/bench_attention.py --ns 32768 65536 131072 262144 \
      --max-dense-n 0 --detail-n 0
  fi
  step layer_after 70 src python3 bench/bench_attention.py --ns 32768 65536 131072 262144 --max-dense-n 0 --detail-n 0
  step generate 90 src python3 bench/bench_generate.py --prompt-len 65536 --new-tokens 128
  step model_262k 170 src python3 bench/bench_model.py --compile --steps 10 --warmup 2 --seq-lens 262144 \
    --backends lighthouse
  step model_262k_options 170 src python3 bench/bench_model.py --compile --steps 10 --warmup 2 --seq-lens 262144 \
    --backends lighthouse --checkpoint-dtype bfloat16 --mlp-chunk 65536 --loss-chunk 65536
  step gpu_tests 240 src python3 -m pytest -q -m gpu tests -rs -p no:cacheprovider
  ;;
tests)
  step gpu_tests 300 src python3 -m pytest -q -m gpu tests -rs -p no:cacheprovider
  # Every op test on CUDA too (they pick the GPU when there is one): the ones not marked gpu, e.g. the causal
  # selection's fast path against the reference, otherwise only ever run in Triton's interpreter.
  step op_tests 240 src python3 -m pytest -q -m "not gpu" tests/ops -p no:cacheprovider
  step layer_causal 90 src python3 bench/bench_attention.py --ns 32768 65536 --detail-n 0 --causal \
    --json "$out/layer_causal.json"
  ;;
long)
  step lh_1m_cli 300 src bash bench/device_train_smoke.sh configs/lh_1m.yaml 12 --throughput.window 4 \
    --throughput.skip_steps 3 --trainer.log_every_n_steps 1
  step model_1m_options 240 src python3 bench/bench_model.py --compile --steps 10 --warmup 2 --flavor paper_1m \
    --seq-lens 524288 1048576 --backends lighthouse --checkpoint-dtype bfloat16 --mlp-chunk 65536 --loss-chunk 65536
  ;;
offload)
  # checkpoint_offload at 262144 with the other memory options (its first timing died; see bench/RESULTS.md).
  step model_262k_offload 400 src python3 bench/bench_model.py --compile --steps 10 --warmup 2 --seq-lens 262144 \
    --backends lighthouse --checkpoint-dtype bfloat16 --mlp-chunk 65536 --loss-chunk 65536 --offload
  ;;
check)
  step gpu_tests 150 src python3 -m pytest -q -m gpu tests -rs -p no:cacheprovider
  step layer 90 src python3 bench/bench_attention.py --ns 32768 65536 131072 262144 --detail-n 0
  step gqa 150 src python3 bench/bench_gqa.py --json "$out/gqa.json"
  ;;
pilot)
  step pilot $((deadline - $(date +%s) - 20)) src python3 src/train.py fit --config "${PILOT_CONFIG:-bench/configs/branch_32k.yaml}" \
    --trainer.max_steps "${PILOT_STEPS:-300}" --trainer.logger.init_args.save_dir logs/pilot \
    --trainer.logger.init_args.name recall-pilot
  tar czf "$out/pilot.tgz" --exclude='*.ckpt' --exclude='*.tmp-*' -C logs pilot
  ;;
table)
  step model_64k_128k 330 src python3 bench/bench_model.py --compile --steps 10 --warmup 2 --seq-lens 65536 131072
  step model_16k 150 src python3 bench/bench_model.py --compile --steps 10 --warmup 2 --seq-lens 16384 --topk 512
  ;;
compare)
  config=${2:?usage: device_round.sh compare CONFIG [compare.py run args]}
  shift 2
  name=compare_$(basename "$config" .yaml | sed 's/^compare_//')
  # An --out logs/NAME in the compare.py arguments (e.g. logs/compare_32k_pass for --steps pass: one folder holds
  # one plan) names the folder instead.
  args=("$@")
  for i in "${!args[@]}"; do
    if [ "${args[$i]}" = --out ]; then
      case ${args[$((i + 1))]:-} in
      logs/?*) name=${args[$((i + 1))]#logs/} ;;
      *) echo "compare: --out must be logs/NAME (the folder this script unpacks and exports)" >&2; exit 2 ;;
      esac
    fi
  done
  # A fresh machine starts from the comparison recorded in the repo (its finished seeds are kept, not rerun).
  if [ ! -d "logs/$name" ] && [ -f "bench/report/runs/$name.tgz" ]; then
    mkdir -p logs && tar xzf "bench/report/runs/$name.tgz" -C logs && echo "unpacked bench/report/runs/$name.tgz" >>"$log"
  fi
  # compare.py keeps its own time budget (it stops its jobs with a checkpoint before it runs out); leave half a
  # minute for the export (a tar of a few MB).
  minutes=$(awk -v s=$((deadline - $(date +%s) - 30)) 'BEGIN { printf "%.2f", s / 60 }')
  PYTHONPATH=${site:+$site:}$PWD/src python3 bench/compare.py run --config "$config" --out "logs/$name" \
    --max-minutes "$minutes" "$@" >>"$log" 2>&1
  rc=$?
  tar czf "$out/$name.tgz" --exclude='*.ckpt' --exclude='*.tmp-*' -C logs "$name"
  tail -n 3 "$log"
  exit $rc
  ;;
branch)
  config=${2:?usage: device_round.sh branch CONFIG --seed N [branch.py run args]}
  shift 2
  seed=
  design=
  resume=
  args=("$@")
  for i in "${!args[@]}"; do
    case ${args[$i]} in
    --seed) seed=${args[$((i + 1))]:-} ;;
    --warmup) [[ ${args[$((i + 1))]:-} =~ ^0+$ ]] && design=-scratch ;;  # branch.py's folder_name
    --out) echo "branch: the folder is logs/<config name>[-scratch]-seed<N>; leave out --out" >&2; exit 2 ;;
    --resume-from) resume=given ;;
    esac
  done
  [[ $seed =~ ^[0-9]+$ ]] || { echo "branch: give --seed N (one seed per folder and archive)" >&2; exit 2; }
  name=$(basename "$config" .yaml)$design-seed$seed
  # A machine can go between two calls of one seed (2026-12-03: the third call found a fresh one and trained D again
  # from step 0). With the last call's archive saved as bench/report/runs/partial/<name>.tgz, the same command
  # continues from it on a fresh machine (branch.py unpacks it only when the folder is absent).
  partial=bench/report/runs/partial/$name.tgz
  if [ -z "$resume" ] && [ -f "$partial" ]; then
    set -- --resume-from "$partial" "$@"  # before the args: train.py overrides after a `--` end them
  fi
  # Leave 15 s for the export (a tar of a few MB: ~2 s measured); branch.py stops its jobs with a checkpoint
  # before its budget ends. At S=800 the jobs of a seed take (seed 1, 2026-12-02, H200): warm-up 2.7 min (~4.5 since
  # it runs deterministically), D 7.4 and its evaluation 0.7, a Lighthouse arm 6.1-6.3 and its two evaluations 1.8,
  # E ~4.5; so W + D + LH + E (~26 min) fill a session's 30 device minutes, not all four. Call with DEADLINE_S=585
  # and, in branch.py's arguments, --reserve-s 20 --no-final-recall --lookahead-windows 32. Near the end of a
  # session's device time the tool's limit is shorter than 600 s (budget left less the machine's start): keep
  # DEADLINE_S 20 s under it (2026-12-03: DEADLINE_S=560 under a 518 s limit was killed before its export).
  minutes=$(awk -v s=$((deadline - $(date +%s) - 15)) 'BEGIN { printf "%.2f", s / 60 }')
  PYTHONPATH=${site:+$site:}$PWD/src python3 bench/branch.py run --config "$config" --out "logs/$name" \
    --max-minutes "$minutes" --export-to "$out" "$@" >>"$log" 2>&1
  rc=$?
  PYTHONPATH=${site:+$site:}$PWD/src python3 bench/branch.py export --out "logs/$name" --to "$out" >>"$log" 2>&1
  tail -n 3 "$log"
  exit $rc
  ;;
*)
  echo "unknown part $part (kernels|tests|long|table|offload|check|pilot|compare|branch)" >&2
  exit 2
  ;;
esac
