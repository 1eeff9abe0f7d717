#!/bin/bash
# Issue 5, target "TransMamba at 50% matches scratch at 100%" with longer training (same epochs
# for both). One training process at a time, one thread. Run from the repo root:
#   bash experiments/vision_epochs.sh <epochs> <arch...>
cd "$(dirname "$0")/.."
EPOCHS=${1:-3}; shift
ARCHS=${@:-vim}
ROOT=runs/vision/epochs$EPOCHS
mkdir -p $ROOT
run() {  # arch mode fraction tag [extra args]
  local out=$ROOT/$1-$2-f$3$4
  if [ -f "$out/result.json" ]; then echo "skip $out"; return; fi
  echo "$(date -u +%T) start $out"
  .venv/bin/python -m transmamba.train_vision distill --config configs/vision/$1-fmnist.yaml \
    --mode $2 --data.fraction $3 --train.epochs $EPOCHS --out_dir $out --train.progress false \
    --init.layers 2 --init.calibrate false --init.calibrate_mlp false "${@:5}" > $out.log 2>&1
  echo "$(date -u +%T) done $out rc=$?"
}
for a in $ARCHS; do
  run $a transmamba 0.5 -kd --distill.kd_weight 1.0
  run $a scratch 1.0 ""
  run $a transmamba 0.5 ""
done
