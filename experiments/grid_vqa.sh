#!/usr/bin/env bash
# Issue 17 grid VQA: the three fusions on a TransMamba ViM (two seeds each) and a scratch student.
# Needs the grid retrieval teacher of experiments/multimodal_retrieval.sh (its ViT is the
# distillation teacher) and runs/vision/teacher-fmnist (subcloning source).
#   bash experiments/grid_vqa.sh [OUT=runs/multimodal/i17] [SEEDS="0 1"] [EPOCHS=1]
# Runs land in $OUT/vqa (1 epoch) or $OUT/vqa-e$EPOCHS.
set -u
OUT=${1:-runs/multimodal/i17}
SEEDS=${2:-0 1}
EPOCHS=${3:-1}
V=$OUT/vqa; [ "$EPOCHS" = 1 ] || V=$OUT/vqa-e$EPOCHS
PY=${PY:-python}
cfg=configs/multimodal/vqa-grid-fmnist.yaml
T=$OUT/grids/teacher/vit
for seed in $SEEDS; do
  for spec in "transmamba late" "transmamba modulate" "transmamba cross_attention" "scratch modulate"; do
    set -- $spec
    [ "$1" = scratch ] && [ "$seed" != 0 ] && continue
    D=$V/$1-$2-s$seed
    [ -f $D/result.json ] || $PY -m transmamba.cli train-vqa --config $cfg --mode $1 --fusion $2 \
        --train.seed $seed --train.epochs $EPOCHS --teacher $T --out_dir $D --train.progress false
  done
done
