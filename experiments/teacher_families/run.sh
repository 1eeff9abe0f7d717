#!/usr/bin/env bash
# Teacher families (issue 14; docs/results.md): exactness of the converter, the P = 0 invariant and a
# convert smoke run for every tiny random family of tests/tiny_teachers.py (~1 min), then the real teacher.
#   bash experiments/teacher_families/run.sh [--no-convert]
# Table: .venv/bin/python experiments/teacher_families/table.py [runs/teacher_families]
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHONPATH=src .venv/bin/python experiments/teacher_families/teacher_families.py --out runs/teacher_families "$@"
[ -d cache/teachers/smollm2 ] || .venv/bin/transmamba teacher prepare
.venv/bin/transmamba teacher check cache/teachers/smollm2 --json
