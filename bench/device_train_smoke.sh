#!/usr/bin/env bash
# A few real training steps of a shipped config through the CLI on a GPU box, throughput records to $OUT.
#   bash bench/device_train_smoke.sh configs/dense_64k.yaml 13 [extra CLI args...]
# (Used through the device tool; on the GPU image jsonargparse comes from carried wheels in .whl/.)
set -uo pipefail
config=$1; steps=$2; shift 2
name=$(basename "$config" .yaml)
out=${OUT:-/tmp}
if [ -d .whl ] && ! python3 -c "import jsonargparse" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site
fi
rm -rf "/tmp/smoke_logs/$name"
python3 src/train.py fit --config "$config" --trainer.max_steps "$steps" --trainer.val_check_interval 100000 \
  --trainer.num_sanity_val_steps 0 \
  --trainer.logger.init_args.save_dir /tmp/smoke_logs --trainer.logger.init_args.version "" "$@" > "$out/$name.log" 2>&1
rc=$?
tail -n 5 "$out/$name.log"
cp "/tmp/smoke_logs/$name/throughput.jsonl" "$out/$name.throughput.jsonl" 2>/dev/null
echo "== $name rc=$rc"; cat "$out/$name.throughput.jsonl" 2>/dev/null
exit $rc
