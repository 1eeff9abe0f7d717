#!/usr/bin/env bash
# Issue 17 text-video students at 8x the budget of experiments/multimodal_retrieval/short.sh: 4 epochs of
# 4000 clips = 252 steps of batch 64 (the clips teacher of that script is the distillation teacher).
#   [EPOCHS=4] [TRAIN_N=4000] [NAME=clips-long] [CONFIG=configs/multimodal/retrieval-clips.yaml] [TEACHER=$OUT/clips/teacher/vit] \
#       [EXTRA="--head.cross_mode prefix"] bash experiments/multimodal_retrieval/clips_long.sh [OUT=runs/multimodal/i17] ["mode fusion seed" ...]
# Runs land in $OUT/$NAME/<mode>-<fusion>-s<seed>; default cells: the 8 listed below
# (seeds 0 and 1 of scratch, and of TransMamba with each fusion). EPOCHS=8: 504 steps.
set -u
# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). AMP="--train.amp auto" runs today's default instead.
OUT=${1:-runs/multimodal/i17}
shift $(( $# < 1 ? $# : 1 ))
PY=${PY:-python}
EPOCHS=${EPOCHS:-4}
TRAIN_N=${TRAIN_N:-4000}
NAME=${NAME:-clips-long}
CONFIG=${CONFIG:-configs/multimodal/retrieval-clips.yaml}
TEACHER=${TEACHER:-$OUT/clips/teacher/vit}
[ $# -gt 0 ] || set -- "transmamba cross_mamba 0" "transmamba none 0" "transmamba cross_mamba 1" "transmamba none 1" \
    "scratch none 0" "scratch none 1" "transmamba cross_attention 0" "transmamba cross_attention 1"
for spec in "$@"; do
  read -r mode fusion seed <<< "$spec"
  D=$OUT/$NAME/$mode-$fusion-s$seed
  [ -f $D/result.json ] || $PY -m transmamba.cli train-retrieval --config $CONFIG \
      --mode $mode --fusion $fusion --train.seed $seed --out_dir $D --teacher $TEACHER \
      --retrieval.train_n $TRAIN_N --retrieval.test_n 500 --train.epochs $EPOCHS --train.progress false ${AMP:---train.amp none} ${EXTRA:-}
done
