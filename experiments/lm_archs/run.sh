#!/usr/bin/env bash
# Four LM architectures and TransPoint schedules at CPU scale (issue 4; docs/results.md).
#   bash experiments/lm_archs/run.sh archs [tokens]   # the 7 runs into runs/lm (default 150000 tokens)
#   bash experiments/lm_archs/run.sh bench            # speed: transmamba bench lm --json --threads 1
# Table: .venv/bin/python experiments/lm_archs/table.py [runs/lm]
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:-archs}; shift $(( $# > 0 ? 1 : 0 ))
case $step in
  archs) bash experiments/lm_archs/archs.sh "$@" ;;
  bench) .venv/bin/transmamba bench lm --json --threads 1 ;;
  *) echo "usage: $0 archs [tokens] | bench"; exit 2 ;;
esac
