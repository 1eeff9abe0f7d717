#!/usr/bin/env bash
# Text-image / text-video retrieval (issue 17; docs/results.md). Needs runs/vision/teacher-fmnist.
# One thread per run (OMP_NUM_THREADS=1), at most two runs at a time.
#   short                  teachers + the 32-step students on grids and clips (short.sh; ~17 min on one core)
#   clips [CELLS...]       text-video students at 252 steps (clips_long.sh; EPOCHS=8 NAME=clips-e8: 504 steps;
#                          ~5-20 min per run); cells are "mode fusion seed"
#   twin-teacher           the twin-clips teacher (12000 clips, 2 epochs)
#   twin [STOP_GRAD] [SEEDS]  twin clips, 752 steps: no cross-Mamba and cross-Mamba prefix (STOP_GRAD none|scores|all;
#                          ~45-70 min per run)
#   twin-captions          how alike MiniLM makes a twin caption and its twin (twin_caption_similarity.py)
# Table: .venv/bin/python experiments/multimodal_retrieval/table.py [runs/multimodal/i17]
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/multimodal_retrieval
export PY=${PY:-.venv/bin/python}
OUT=runs/multimodal/i17
step=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
TWIN=(CONFIG=configs/multimodal/retrieval-twin-clips.yaml TEACHER=$OUT/twin12k/teacher/vit EPOCHS=4 TRAIN_N=12000 OMP_NUM_THREADS=1)
case $step in
  short) bash $D/short.sh $OUT ;;
  clips) bash $D/clips_long.sh $OUT "$@" ;;
  twin-teacher)
    OMP_NUM_THREADS=1 .venv/bin/transmamba train-retrieval --config configs/multimodal/retrieval-twin-clips.yaml --role teacher \
      --fusion none --out_dir $OUT/twin12k/teacher --retrieval.train_n 12000 --train.epochs 2 --train.progress false \
      --train.threads 1 ${AMP:---train.amp none} ;;
  twin)
    SG=${1:-none}; SEEDS=${2:-0 1}
    for s in $SEEDS; do
      env "${TWIN[@]}" NAME=twin12k-e4 bash $D/clips_long.sh $OUT "transmamba none $s"
      case $SG in none) N=twin12k-e4-prefix ;; all) N=twin12k-e4-prefix-sg ;; scores) N=twin12k-e4-prefix-sgs ;; esac
      env "${TWIN[@]}" NAME=$N EXTRA="--head.cross_mode prefix --head.stop_grad $SG" bash $D/clips_long.sh $OUT "transmamba cross_mamba $s"
    done ;;
  twin-captions) $PY $D/twin_caption_similarity.py "$@" ;;
  *) echo "usage: $0 short|clips [CELLS...]|twin-teacher|twin [none|scores|all] [SEEDS]|twin-captions"; exit 2 ;;
esac
