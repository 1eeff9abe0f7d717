#!/usr/bin/env bash
# Kernels (issue 3): ours vs the references and peers, 1 intra-op thread (docs/results.md, "Kernels").
#   bash experiments/kernels/run.sh [full|quick]      (full: the recorded table; quick: ~20 s)
# The bench prints the markdown table itself (no table script).
set -euo pipefail
cd "$(dirname "$0")/../.."
case ${1:-full} in
  full)  .venv/bin/transmamba bench kernels --json --threads 1 ;;
  quick) .venv/bin/transmamba bench kernels --quick --threads 1 ;;
  *) echo "usage: $0 full|quick"; exit 2 ;;
esac
