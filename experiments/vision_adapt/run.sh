#!/usr/bin/env bash
# TransMamba-Adapt on vision (issue 5; docs/results.md). Fashion-MNIST (`make fmnist`), one torch
# thread per run. One study per call, from the repo root:
#   calibration pilot|seeds|fractions|ablation|epochs3   the v3 recipe (CAL) and its tables (calibration.sh;
#                                                        two runs at a time, ~5-10 min per run)
#   grid-v2                     the v2 grid: scratch vs TransMamba at 25/50/100%, 18 runs  (grid_v2.sh)
#   strong-teacher [arch...]    the v2 cells with the 30-epoch augmented teacher         (strong_teacher.sh)
#   seeds SEED [arch...]        scratch 100% vs TransMamba 50%, one more seed (LAYERS=4 for n = 4)  (seeds.sh)
#   epochs N [arch...]          the 50%-vs-100% cells for N epochs                        (epochs.sh)
#   mixer-init JSON             init_top1 and layer-0/1 mixer cosines, no training        (mixer_init.py)
# (the VideoMamba rows: experiments/video/run.sh.) The recorded runs are fp32: _vision_run.sh pins
# --train.amp none (AMP="--train.amp auto" for today's default).
# Tables: .venv/bin/python experiments/vision_adapt/table.py calibration|grid-v2|strong-teacher|seeds
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/vision_adapt
step=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
case $step in
  calibration)    bash $D/calibration.sh "$@" ;;
  grid-v2)        bash $D/grid_v2.sh ;;
  strong-teacher) bash $D/strong_teacher.sh "$@" ;;
  seeds)          bash $D/seeds.sh "$@" ;;
  epochs)         bash $D/epochs.sh "$@" ;;
  mixer-init)     .venv/bin/python $D/mixer_init.py "$@" ;;
  *) echo "usage: $0 calibration STEP|grid-v2|strong-teacher [arch...]|seeds SEED [arch...]|epochs N [arch...]|mixer-init JSON"; exit 2 ;;
esac
