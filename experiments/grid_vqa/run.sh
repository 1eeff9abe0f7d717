#!/usr/bin/env bash
# Grid VQA (issue 17; docs/results.md): where / count / relation questions on 2x2 Fashion-MNIST grids.
# Needs the grid retrieval teacher (bash experiments/multimodal_retrieval/run.sh short) and
# runs/vision/teacher-fmnist. One thread per run; two lanes of `cells` may run side by side.
#   cells OUT SEEDS NAME [train-vqa flags]   the end-to-end cells (cells.sh; SPECS="mode fusion,..." picks them)
#   v6 [SEEDS]     TransMamba + cross-Mamba, cell-local teacher (the best row; ~35 min per seed)
#   v4 [SEEDS]     cross-Mamba / late / cross-attention on TransMamba and cross-Mamba on scratch, 2000
#                  fusion-only + 500 end-to-end steps (~20-30 min per run)
#   oracle [args]  perfect visual tokens: which fusion can learn the task   (grid_vqa_oracle.py)
#   frozen [args]  frozen real tokens, fusion only                          (grid_vqa_frozen.py --teacher ...)
#   probe [args]   linear probes of cell contents in the tokens             (grid_token_probe.py)
# Table: .venv/bin/python experiments/grid_vqa/table.py [runs/multimodal/i17]
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/grid_vqa
PY=${PY:-.venv/bin/python}
export PY
OUT=runs/multimodal/i17
TEACHER=$OUT/grids/teacher/vit
step=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
V4="--train.epochs 5 --train.fusion_first_steps 2000 --train.threads 1"
case $step in
  cells)  bash $D/cells.sh "$@" ;;
  v6)     SPECS="transmamba modulate" bash $D/cells.sh $OUT "${1:-0 1}" vqa-w4-df500-ff2000-e5 $V4 \
            --train.distill_first_steps 500 --distill.teacher_window 4 ;;
  v4)     SPECS="transmamba modulate,transmamba late,transmamba cross_attention,scratch modulate" \
            bash $D/cells.sh $OUT "${1:-0 1}" vqa-ff2000-e5 $V4 ;;
  oracle) $PY $D/grid_vqa_oracle.py "$@" ;;
  frozen) $PY $D/grid_vqa_frozen.py --teacher $TEACHER "$@" ;;
  probe)  $PY $D/grid_token_probe.py --teacher $TEACHER "$@" ;;
  *) echo "usage: $0 cells OUT SEEDS NAME [flags]|v6 [SEEDS]|v4 [SEEDS]|oracle|frozen|probe [args]"; exit 2 ;;
esac
