#!/usr/bin/env bash
# Issue 17 retrieval grid (small CPU budget): teachers, then students per task.
#   bash experiments/multimodal_retrieval/short.sh [OUT=runs/multimodal/i17]
set -u
# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). AMP="--train.amp auto" runs today's default instead.
OUT=${1:-runs/multimodal/i17}
PY=${PY:-python}
run() { $PY -m transmamba.cli train-retrieval "$@" --train.progress false ${AMP:---train.amp none}; }
for task in grids clips; do
  cfg=configs/multimodal/retrieval-$task.yaml
  T=$OUT/$task/teacher
  [ -f $T/result.json ] || run --config $cfg --role teacher --fusion none --out_dir $T \
      --retrieval.train_n 4000 --train.epochs 2 --retrieval.test_n 500
  S="--retrieval.train_n 2000 --retrieval.test_n 500 --teacher $T/vit"
  for spec in "scratch none 0" "transmamba none 0" "transmamba cross_mamba 0" "transmamba cross_attention 0" \
              "transmamba none 1" "transmamba cross_mamba 1" "scratch none 1" "transmamba cross_attention 1"; do
    set -- $spec
    D=$OUT/$task/$1-$2-s$3
    [ -f $D/result.json ] || run --config $cfg --mode $1 --fusion $2 --train.seed $3 --out_dir $D $S
  done
done
