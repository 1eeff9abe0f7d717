#!/usr/bin/env bash
# Retrieval heads (issue 38 pilot; docs/results.md). One step per call, from anywhere:
#   rank        the teacher's KV heads ranked by the key-value probe, each head mean-ablated (~6-10 min)
#   students    k0, k6-retrieval, k6-random, layers2, k6-switch-cost (~6-10 min each)
#   eval NAME.. transmamba eval --suite retrieval --parts perplexity,passkey,probe,speed --ret-lengths 1024 2048
#               (the teacher's results computed once, then reused)
#   table       the table (table.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/retrieval_heads
R=runs/retrieval_heads
T=.venv/bin/transmamba
step=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
case $step in
  rank)     $T heads smollm2 --by retrieval --method mean --kinds kv --lengths 512 --trials 2 \
              --depths 0.25 0.75 --out $R/heads-teacher ;;
  students) for c in ${@:-k0 k6-retrieval k6-random layers2 k6-switch-cost}; do
              $T convert --teacher smollm2 --student $D/$c.yaml --quiet; done ;;
  eval)     for n in ${@:-rh-k0 rh-k6-retrieval rh-k6-random rh-layers2 rh-k6-switch-cost}; do
              $T eval --model $R/$n/student --teacher smollm2 --suite retrieval --parts perplexity,passkey,probe,speed \
                 --ret-lengths 1024 2048 --teacher-cache $R/teacher-eval; done ;;
  table)    .venv/bin/python $D/table.py ;;
  *) echo "usage: $0 rank|students [CONFIG...]|eval [NAME...]|table"; exit 2 ;;
esac
