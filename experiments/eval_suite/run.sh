#!/usr/bin/env bash
# `transmamba eval` on the demo student and on the 40-minute long50 student (issue 15; docs/results.md).
#   bash experiments/eval_suite/run.sh demo     # make demo, then the default suite (~14 min for both models)
#   bash experiments/eval_suite/run.sh long50   # needs runs/long50 (bash experiments/hybrid_demo/run.sh long50)
# The suite writes its own tables: runs/<run>/eval/report.md and results.json (no table script).
# The recorded demo row is the 2026-12-02 demo (32k + 32k tokens, no attention layers): to get that
# student use `bash experiments/hybrid_demo/run.sh demo-32k demo --recipe.keep_attention 0`.
set -euo pipefail
cd "$(dirname "$0")/../.."
case ${1:-} in
  demo)   [ -d runs/demo/student ] || make demo
          /usr/bin/time -v .venv/bin/transmamba eval --model runs/demo/student --teacher smollm2 --suite default --out runs/demo/eval ;;
  long50) .venv/bin/transmamba eval --model runs/long50/student --teacher smollm2 --suite default --out runs/long50/eval ;;
  *) echo "usage: $0 demo|long50"; exit 2 ;;
esac
