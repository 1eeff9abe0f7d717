#!/usr/bin/env bash
# Issue 17 grid VQA: the three fusions on a TransMamba ViM and a scratch student, for each seed.
# Needs the grid retrieval teacher of experiments/multimodal_retrieval/short.sh (its ViT is the
# distillation teacher) and runs/vision/teacher-fmnist (subcloning source).
#   bash experiments/grid_vqa/cells.sh [OUT=runs/multimodal/i17] [SEEDS="0 1"] [NAME=vqa] [train-vqa flags ...]
# Runs land in $OUT/$NAME/<mode>-<fusion>-s<seed>; the flags (e.g. --train.epochs 4
# --head.readout mean) go to every run. SPECS="transmamba late,..." picks the cells (default all four).
set -u
# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). AMP="--train.amp auto" runs today's default instead.
OUT=${1:-runs/multimodal/i17}
SEEDS=${2:-0 1}
NAME=${3:-vqa}
shift $(( $# < 3 ? $# : 3 ))
PY=${PY:-python}
SPECS=${SPECS:-transmamba late,transmamba modulate,transmamba cross_attention,scratch modulate}
cfg=configs/multimodal/vqa-grid-fmnist.yaml
T=$OUT/grids/teacher/vit
IFS=, read -ra specs <<< "$SPECS"
for seed in $SEEDS; do
  for spec in "${specs[@]}"; do
    read -r mode fusion <<< "$spec"
    D=$OUT/$NAME/$mode-$fusion-s$seed
    [ -f $D/result.json ] || $PY -m transmamba.cli train-vqa --config $cfg --mode $mode --fusion $fusion \
        --train.seed $seed --teacher $T --out_dir $D --train.progress false ${AMP:---train.amp none} "$@"
  done
done
