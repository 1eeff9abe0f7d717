#!/usr/bin/env bash
# Issue 17 grid VQA: the three fusions on a TransMamba ViM and a scratch student, for each seed.
# Needs the grid retrieval teacher of experiments/multimodal_retrieval.sh (its ViT is the
# distillation teacher) and runs/vision/teacher-fmnist (subcloning source).
#   bash experiments/grid_vqa.sh [OUT=runs/multimodal/i17] [SEEDS="0 1"] [EPOCHS=1] [READOUT=mean]
# Runs land in $OUT/vqa (1 epoch, mean readout), $OUT/vqa-e$EPOCHS, and -$READOUT appended when the
# readout is not the mean (attn: adapt/attention_pool.py).
set -u
OUT=${1:-runs/multimodal/i17}
SEEDS=${2:-0 1}
EPOCHS=${3:-1}
READOUT=${4:-mean}
V=$OUT/vqa; [ "$EPOCHS" = 1 ] || V=$OUT/vqa-e$EPOCHS; [ "$READOUT" = mean ] || V=$V-$READOUT
PY=${PY:-python}
cfg=configs/multimodal/vqa-grid-fmnist.yaml
T=$OUT/grids/teacher/vit
for seed in $SEEDS; do
  for spec in "transmamba late" "transmamba modulate" "transmamba cross_attention" "scratch modulate"; do
    set -- $spec
    D=$V/$1-$2-s$seed
    [ -f $D/result.json ] || $PY -m transmamba.cli train-vqa --config $cfg --mode $1 --fusion $2 \
        --train.seed $seed --train.epochs $EPOCHS --head.readout $READOUT --teacher $T --out_dir $D \
        --train.progress false
  done
done
