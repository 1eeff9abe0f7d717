#!/usr/bin/env bash
# Converting SmolLM2-135M into TransMamba-Switch (issue 6; docs/results.md). One step per call:
#   lossless      full-size conversion vs the teacher, P lowered step by step      (lossless_check.py, ~1 min)
#   subclone      which cuts survive subcloning, perplexity at init                  (subclone_init.py, ~5 min)
#   width         calibrated-init perplexity per student width                       (student_width.py, ~5 min)
#   ssm-calib     the SSM-path calibration at init                                   (ssm_calibration.py, ~2 min)
#   recipes [tokens] [out_dir]  scratch / init-only / full / full-anneal at equal tokens (recipes.sh;
#                 CFG=..., ONLY="..." select; the v2 table: `recipes 30000 runs/convert-v2`, ~4 x 6 min)
#   wide          the v3 table: the wide student, all four recipes, 251,904 tokens each into runs/convert-wide
#                 (~50-70 min per run on one thread)
#   mamba2        the wide student with every TransPoint at 0: mamba2-full and mamba2-scratch (~40-80 min each)
#   sweep RUN...  perplexity vs TransPoint on 8 held-out 1024-token windows      (transpoint_sweep.py)
#   bench [wide|narrow]  student vs teacher speed: transmamba bench convert --json --threads 1
# Table: .venv/bin/python experiments/convert_smollm2/table.py runs/convert-wide (or runs/convert-v2)
# The recorded runs are fp32 (before amp auto, 2026-12-07): recipes.sh pins --train.amp none, as do
# the steps below.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/convert_smollm2
PY=.venv/bin/python
T=.venv/bin/transmamba
WIDE=configs/convert/smollm2-switch-wide.yaml
step=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
case $step in
  lossless)  $PY $D/lossless_check.py ;;
  subclone)  $PY $D/subclone_init.py ;;
  width)     $PY $D/student_width.py ;;
  ssm-calib) $PY $D/ssm_calibration.py ;;
  recipes)   bash $D/recipes.sh "$@" ;;
  wide)
    $T convert --teacher smollm2 --student $WIDE --name full --quiet --train.amp none
    $T convert --teacher smollm2 --student $WIDE --name scratch --recipe.subclone false --recipe.distill false --quiet --train.amp none
    CFG=$WIDE ONLY="init-only full-anneal" bash $D/recipes.sh 250000 runs/convert-wide ;;
  mamba2)
    OMP_NUM_THREADS=2 $T convert --teacher smollm2 --student $WIDE --name mamba2-full --out_dir runs/convert-wide \
      --student.schedule ssm --quiet --train.amp none
    $T convert --teacher smollm2 --student $WIDE --name mamba2-scratch --out_dir runs/convert-wide \
      --student.schedule ssm --quiet --train.amp none --recipe.subclone false --recipe.distill false ;;
  sweep)     $PY $D/transpoint_sweep.py "$@" --windows 8 ;;
  bench)
    if [ "${1:-wide}" = narrow ]; then $T bench convert --json --threads 1 --student configs/convert/smollm2-switch.yaml
    else $T bench convert --json --threads 1; fi ;;
  *) echo "usage: $0 lossless|subclone|width|ssm-calib|recipes [tokens] [out]|wide|mamba2|sweep RUN...|bench [wide|narrow]"; exit 2 ;;
esac
