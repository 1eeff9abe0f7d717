#!/bin/bash
# Issue 5, target "TransMamba at 50% matches scratch at 100%" (one epoch, as the main grid), with a
# stronger teacher: configs/vision/teacher-fmnist-strong.yaml (same ViT, 30 epochs, shift+flip
# augmentation). One training process at a time, one thread. Run from the repo root:
#   bash experiments/vision_adapt/strong_teacher.sh [arch...]      (default: vim vmamba plainmamba)
# Table: .venv/bin/python experiments/vision_adapt/strong_teacher_table.py
cd "$(dirname "$0")/../.."
source experiments/vision_adapt/_vision_run.sh
TEACHER=${TEACHER:-runs/vision/teacher-fmnist-strong}
ROOT=${ROOT:-runs/vision/strong-teacher}
ARCHS=${@:-vim vmamba plainmamba}
mkdir -p $ROOT
strong_teacher $TEACHER
run() {  # arch mode fraction tag [extra args]
  vision_run $ROOT/$1-$2-f$3$4 $1 $2 $3 --teacher $TEACHER --init.layers 2 $PRE_V3 "${@:5}"
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
