#!/usr/bin/env bash
# Issue 6 evaluation: SmolLM2-135M -> TransMamba-Switch student, recipes compared at equal tokens.
# Results: <out_dir>/<name>/summary.json, report.md, loss_curve.png.
# Usage: [CFG=student.yaml] [ONLY="full scratch"] bash experiments/convert_smollm2/recipes.sh [tokens] [out_dir] [extra convert args...]
#        (defaults: CFG configs/convert/smollm2-switch.yaml, all four runs, 40000 runs/convert)
set -euo pipefail
# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). AMP="--train.amp auto" runs today's default instead.
cd "$(dirname "$0")/../.."
TOKENS=${1:-40000}
OUT=${2:-runs/convert}
shift $(( $# > 2 ? 2 : $# ))
CFG=${CFG:-configs/convert/smollm2-switch.yaml}
run() { name=$1; shift; [ -f $OUT/$name/summary.json ] && return 0
        [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return 0
        .venv/bin/transmamba convert --teacher smollm2 --student $CFG --name $name --out_dir $OUT \
            --train.tokens $TOKENS --quiet ${AMP:---train.amp none} "$@"; }
run full        "$@"
run scratch     --recipe.subclone false --recipe.distill false "$@"
run init-only   --recipe.distill false "$@"
run full-anneal --recipe.anneal_frac 0.5 "$@"
