#!/bin/bash
# Issue 5, target "TransMamba at 50% matches scratch at 100%" (one epoch, as the main grid), with a
# stronger teacher: configs/vision/teacher-fmnist-strong.yaml (same ViT, 30 epochs, shift+flip
# augmentation). One training process at a time, one thread. Run from the repo root:
#   bash experiments/vision_strong_teacher.sh [arch...]      (default: vim vmamba plainmamba)
# Table: .venv/bin/python experiments/vision_strong_teacher_table.py
cd "$(dirname "$0")/.."
TEACHER=${TEACHER:-runs/vision/teacher-fmnist-strong}
ROOT=${ROOT:-runs/vision/strong-teacher}
ARCHS=${@:-vim vmamba plainmamba}
mkdir -p $ROOT
[ -f $TEACHER/result.json ] || .venv/bin/transmamba train-teacher \
    --config configs/vision/teacher-fmnist-strong.yaml --out_dir $TEACHER --train.progress false
run() {  # arch mode fraction tag [extra args]
  local out=$ROOT/$1-$2-f$3$4
  if [ -f "$out/result.json" ]; then echo "skip $out"; return; fi
  echo "$(date -u +%T) start $out"
  .venv/bin/transmamba distill --config configs/vision/$1-fmnist.yaml --teacher $TEACHER \
    --mode $2 --data.fraction $3 --init.layers 2 --out_dir $out --train.progress false "${@:5}" > $out.log 2>&1
  echo "$(date -u +%T) done $out rc=$?"
}
for a in $ARCHS; do run $a scratch 1.0 ""; done   # same-session re-run of the v2 scratch rows
for a in $ARCHS; do
  run $a transmamba 0.5 ""
  run $a transmamba 0.5 -kd --distill.kd_weight 1.0
done
for a in $ARCHS; do
  run $a transmamba 0.25 ""
  run $a transmamba 1.0 ""
done
