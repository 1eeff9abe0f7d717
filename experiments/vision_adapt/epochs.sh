#!/bin/bash
# Issue 5, target "TransMamba at 50% matches scratch at 100%" with longer training (same epochs
# for both). One training process at a time, one thread. Run from the repo root:
#   bash experiments/vision_adapt/epochs.sh <epochs> <arch...>
cd "$(dirname "$0")/../.."
source experiments/vision_adapt/_vision_run.sh
EPOCHS=${1:-3}; shift
ARCHS=${@:-vim}
ROOT=runs/vision/epochs$EPOCHS
mkdir -p $ROOT
for a in $ARCHS; do
  vision_run $ROOT/$a-transmamba-f0.5-kd $a transmamba 0.5 --train.epochs $EPOCHS --init.layers 2 $PRE_V3 \
    --distill.kd_weight 1.0
  vision_run $ROOT/$a-scratch-f1.0 $a scratch 1.0 --train.epochs $EPOCHS --init.layers 2 $PRE_V3
  vision_run $ROOT/$a-transmamba-f0.5 $a transmamba 0.5 --train.epochs $EPOCHS --init.layers 2 $PRE_V3
done
