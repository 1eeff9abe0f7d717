#!/bin/bash
# Issue 5: is the 50%-vs-100% gap (strong teacher, one epoch) outside seed noise? Re-runs the two
# cells the target compares, scratch at 100% and TransMamba at 50% (--init.layers 2), for more seeds
# (data subset and training seed both = SEED; seed 0 is runs/vision/strong-teacher). One thread per
# run (the student configs' train.threads). Run from the repo root:
#   [LAYERS=n] bash experiments/vision_adapt/seeds.sh SEED [arch...]      (default archs: vim vmamba plainmamba;
#   with LAYERS != 2 only the TransMamba cell runs)
# Table: .venv/bin/python experiments/vision_adapt/seeds_table.py
cd "$(dirname "$0")/../.."
source experiments/vision_adapt/_vision_run.sh
SEED=$1; shift
TEACHER=${TEACHER:-runs/vision/teacher-fmnist-strong}
ROOT=${ROOT:-runs/vision/seeds}
LAYERS=${LAYERS:-2}  # --init.layers of the TransMamba runs; runs with LAYERS != 2 get a -n<LAYERS> suffix
ARCHS=${@:-vim vmamba plainmamba}
mkdir -p $ROOT
strong_teacher $TEACHER
run() {  # arch mode fraction [suffix]
  vision_run $ROOT/$1-$2-f$3-s$SEED$4 $1 $2 $3 --teacher $TEACHER --init.layers $LAYERS $PRE_V3 \
    --data.seed $SEED --train.seed $SEED
}
for a in $ARCHS; do
  run $a transmamba 0.5 $([ "$LAYERS" = 2 ] || printf -- "-n%s" "$LAYERS")
  [ "$LAYERS" = 2 ] && run $a scratch 1.0
done
