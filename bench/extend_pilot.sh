#!/usr/bin/env bash
# Context extension on the H200 (issue 27): a paper-shaped model pre-trained here briefly at 4096 and exported (a
# real Hugging Face Llama folder), then imported and extended to 65536 with Lighthouse for N steps + dense recovery
# for M (configs/extend_64k.yaml in one job, switching at N), against a dense extension of N + M steps; loss by
# position before (the imported model at 65536, its own rope_theta) and after, tokens/s of each phase.
# Parts, each meant for one 10-minute device call, in this order on one warm machine (state lives in $PILOT):
#   bash bench/extend_pilot.sh pretrain     # 4096-token dense pre-training (PRE_STEPS), export to $PILOT/pretrained_4k
#   bash bench/extend_pilot.sh before       # validate the imported, un-extended model at 65536 (loss by position)
#   bash bench/extend_pilot.sh lighthouse   # extend: rope_theta 8e6, Lighthouse N steps + dense recovery M steps
#   bash bench/extend_pilot.sh dense        # the same extension with dense attention throughout
#   bash bench/extend_pilot.sh report       # the table for bench/RESULTS.md (also printed after each part)
# A part cut by its time limit (trainer.max_time, MAX_TIME) saves its step; calling it again resumes it.
# Measured (one H200, 2026-12-03): with PRE_STEPS=200 N=48 M=16 and PRE_EXTRA / EXTEND_EXTRA "--model.compile false"
# all four parts fit one call (518 s: pretrain 122 s, lighthouse 145 s, dense 210 s); bench/RESULTS.md has the table.
# Everything goes to $OUT/extend_<part>.log.
set -uo pipefail
part=${1:?usage: extend_pilot.sh pretrain|before|lighthouse|dense|report}
out=${OUT:-/tmp/extend_pilot}
PILOT=${PILOT:-logs/extend_pilot}
PRE_STEPS=${PRE_STEPS:-600}  # x 8 x 4096 tokens
N=${N:-120}
M=${M:-40}
THETA=${THETA:-8000000.0}
MAX_TIME=${MAX_TIME:-00:00:08:00}
# Extra CLI arguments (unquoted word lists) for the pre-training fit (PRE_EXTRA) and for the before / extension
# runs (EXTEND_EXTRA), e.g. "--model.compile false"; tests/test_extend_pilot.py runs the script on a CPU with them.
read -r -a pre_extra <<<"${PRE_EXTRA:-}"
read -r -a extend_extra <<<"${EXTEND_EXTRA:-}"
mkdir -p "$out" "$PILOT"
log="$out/extend_$part.log"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
pretrained=$PILOT/pretrained_4k

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  git log -1 --format='commit %h %s' 2>/dev/null; echo "N=$N M=$M THETA=$THETA PRE_STEPS=$PRE_STEPS"; } >>"$log" 2>&1

resume_flag() {  # --ckpt_path last when the run NAME already has a checkpoint (a part cut by MAX_TIME)
  if compgen -G "$PILOT/logs/$1/*/checkpoints/last.ckpt" >/dev/null; then echo "--ckpt_path last"; fi
}

train() {  # train NAME CONFIG ARGS...: one fit into $PILOT/logs/NAME, timed, appended to the log
  local name=$1 config=$2 start rc
  shift 2
  start=$(date +%s)
  # shellcheck disable=SC2046
  python3 src/train.py fit --config "$config" --trainer.logger.init_args.save_dir "$PILOT/logs" \
    --trainer.logger.init_args.name "$name" --trainer.max_time "$MAX_TIME" --trainer.enable_progress_bar false \
    "$@" $(resume_flag "$name") >>"$log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start))s" | tee -a "$log"
}

# Validate every gcd(N, M) steps: at the switch AND at the end (an interval of N alone never reaches step N + M).
gcd() { local a=$1 b=$2; while ((b)); do set -- "$b" $((a % b)); a=$1 b=$2; done; echo "$a"; }
extend_args=(--model.init_from "$pretrained" --model.arch.rope_theta "$THETA" --trainer.max_steps $((N + M))
  --model.schedule_steps $((N + M)) --model.warmup_steps 20 --trainer.val_check_interval "$(gcd "$N" "$M")"
  --data.val_batches 4
  ${extend_extra[@]+"${extend_extra[@]}"})

case $part in
pretrain)
  train pretrain_4k configs/dense_64k.yaml --data.seq_len 4096 --data.batch_size 8 --trainer.max_steps "$PRE_STEPS" \
    --model.schedule_steps "$PRE_STEPS" --model.warmup_steps 50 --trainer.val_check_interval "$PRE_STEPS" \
    ${pre_extra[@]+"${pre_extra[@]}"}
  ckpt=$(ls -d "$PILOT"/logs/pretrain_4k/*/checkpoints/last.ckpt | tail -n 1)
  python3 src/export.py --ckpt "$ckpt" --out "$pretrained" >>"$log" 2>&1 && echo "exported $pretrained" | tee -a "$log"
  ;;
before)
  # The imported model as it is (rope_theta of the folder, no extension), validated at 65536.
  python3 src/train.py validate --config configs/extend_64k.yaml --model.init_from "$pretrained" --model.arch.rope_theta null \
    --model.arch.attention sdpa --data.val_batches 4 --trainer.logger.init_args.save_dir "$PILOT/logs" \
    --trainer.logger.init_args.name before --trainer.enable_progress_bar false \
    ${extend_extra[@]+"${extend_extra[@]}"} >>"$log" 2>&1
  echo "before rc=$?" | tee -a "$log"
  ;;
lighthouse)
  train lighthouse configs/extend_64k.yaml "${extend_args[@]}" --stage.switch_step "$N"
  ;;
dense)
  train dense configs/extend_64k.yaml "${extend_args[@]}" --model.arch.attention sdpa --stage.switch_step null
  ;;
report) ;;
*)
  echo "unknown part $part" >&2
  exit 2
  ;;
esac
# After pretrain there is no run of the table yet (extend_report.py would refuse the folder, exit code 2).
if [ "$part" != pretrain ]; then
  python3 bench/extend_report.py "$PILOT/logs" | tee -a "$log"
fi
