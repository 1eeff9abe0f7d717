#!/usr/bin/env bash
# One training engine (issue 13; docs/results.md): one row per recipe re-run through the engine, and
# fp32 vs bf16. One heavy job at a time.
#   bash experiments/engine/run.sh [step ...]    steps: lm lm-bf16 teacher vim vqa convert convert-bf16 (default: all,
#                                               ~25 min in all on 2 cores; repro.sh)
#   bash experiments/engine/run.sh amp-probe     one train step fp32 vs bf16 (amp_step_probe.py)
# Tables: .venv/bin/python experiments/engine/table.py    (one row per recipe)
#         .venv/bin/python experiments/engine/amp_compare.py runs/repro/lm-transmamba-depth runs/repro/lm-transmamba-depth-bf16
#         .venv/bin/python experiments/engine/amp_compare.py runs/repro/convert/full runs/repro/convert/full-bf16
# convert_step_losses.py compares the loop of an older commit with the engine step by step: see README.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" = amp-probe ]; then exec .venv/bin/python experiments/engine/amp_step_probe.py; fi
exec bash experiments/engine/repro.sh "$@"
