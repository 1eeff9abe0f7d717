#!/usr/bin/env bash
# Issue 6 evaluation: SmolLM2-135M -> TransMamba-Switch student, recipes compared at equal tokens.
# Results: runs/convert/<name>/summary.json, report.md, loss_curve.png.
# Usage: bash experiments/convert_recipes.sh [tokens]   (default 40000)
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS=${1:-40000}
CFG=configs/convert/smollm2-switch.yaml
run() { name=$1; shift; [ -f runs/convert/$name/summary.json ] && return 0
        .venv/bin/transmamba convert --teacher smollm2 --student $CFG --name $name --train.tokens $TOKENS --quiet "$@"; }
run full
run scratch     --recipe.subclone false --recipe.distill false
run init-only   --recipe.distill false
run full-anneal --recipe.anneal_frac 0.5
