#!/usr/bin/env bash
# FSDP2 measurements for docs/scale.md (issue 40), one heavy job at a time, 2 threads in all:
#   ac      peak RSS of 3 training steps at 1 x 2048 tokens with and without activation checkpointing
#           (ac_memory.py compare; ~5-10 min on 2 shared cores) -> runs/fsdp/ac_memory.json
#   bytes   per-rank parameter + gradient + AdamW bytes of the demo student, 1 plain process, then 2
#           FSDP ranks of 1 thread each (state_bytes.py; ~2 min) -> runs/fsdp/state_bytes_*.json
#   table   prints both as the rows of docs/scale.md
#   bash experiments/fsdp/run.sh [ac] [bytes] [table]      (default: all three)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
OUT=runs/fsdp
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(ac bytes table)
for s in "${steps[@]}"; do
  case $s in
    ac) $PY experiments/fsdp/ac_memory.py compare --steps 3 --batch 1 --seq 2048 --threads 2 --out $OUT/ac_memory.json ;;
    bytes)
      $PY experiments/fsdp/state_bytes.py $OUT
      OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone --nproc_per_node 2 \
        experiments/fsdp/state_bytes.py $OUT --fsdp ;;
    table) $PY experiments/fsdp/table.py $OUT ;;
    *) echo "unknown step $s (ac | bytes | table)" >&2; exit 2 ;;
  esac
done
