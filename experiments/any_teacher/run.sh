#!/usr/bin/env bash
# The any-teacher study: a Qwen3 teacher with its own tokenizer -> a Switch student (docs/results.md).
#   bash experiments/any_teacher/run.sh [--key value ...]     (overrides go to transmamba convert)
set -euo pipefail
cd "$(dirname "$0")/../.."
T=runs/any_teacher/qwen3-shakespeare
[ -f $T/config.json ] || .venv/bin/python experiments/any_teacher/make_teacher.py $T
.venv/bin/transmamba teacher check $T --json
.venv/bin/transmamba convert --teacher $T --student experiments/any_teacher/student.yaml --quiet "$@"
