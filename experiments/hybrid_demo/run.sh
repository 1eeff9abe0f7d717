#!/usr/bin/env bash
# Hybrid students and the demo (issue 16; docs/results.md). One step per call, from the repo root:
#   demo                the `make demo` run (configs/convert/demo.yaml; ~6-9 min after install)
#   demo-k K            the demo with recipe.keep_attention K into runs/demo-kK (K = 2, 8 in the table)
#   demo-even4          the demo with 4 evenly spaced attention layers [3, 10, 17, 24]
#   demo-32k [NAME]     the demo at its 2026-12-02 budget (32k + 32k tokens; every demo row dated before 2026-12-03 12:15)
#   CONFIG              any config of this folder: long50, long50-k4, small-k4, small-k4-nolocal, small2h,
#                       small2h-k8, demo-e2e, wide-local, wide-local-mixer  (40-110 min each, see README)
#   step-time           seconds per distillation step of small2h-k8 / k4 / k0 (distill_step_time.py)
#   decode RUN_DIR...   decode tok/s at 4k, saved students vs the teacher (decode_compare.py RUN_DIR/student ...)
#   decode-ab RUN_DIR   the step with its ops' references vs the fast ops (decode_step_ab.py, 1 and 2 threads)
#   bench               transmamba bench distill --threads 2 (the 3.3x row)
# Table: .venv/bin/python experiments/hybrid_demo/table.py [run dir ...]   (default: the runs above under runs/)
set -euo pipefail
cd "$(dirname "$0")/../.."
D=experiments/hybrid_demo
T=.venv/bin/transmamba
DEMO="convert --teacher smollm2 --student configs/convert/demo.yaml --quiet --train.amp bf16"  # bf16: the convert default
# when the demo-variant rows ran (2026-12-02/03); `make demo` (step demo) runs today's amp auto
step=${1:-}; shift $(( $# > 0 ? 1 : 0 ))
case $step in
  demo)       make demo ;;
  demo-k)     $T $DEMO --name demo-k$1 --recipe.keep_attention $1 ;;
  demo-even4) $T $DEMO --name demo-even4 --recipe.keep_attention 0 \
                --student.schedule "{name: hybrid, base: {name: fixed, P: 128}, attention_layers: [3, 10, 17, 24]}" ;;
  demo-32k)   $T $DEMO --name ${1:-demo-32k} --recipe.local_tokens 32768 --train.tokens 32768 "${@:2}" ;;
  small-k4-nolocal) /usr/bin/time -v $T convert --teacher smollm2 --student $D/small-k4.yaml --quiet \
                --name small-k4-nolocal --recipe.local_tokens 0 ;;
  long50|long50-k4|small-k4|small2h|small2h-k8|demo-e2e|wide-local|wide-local-mixer)
              /usr/bin/time -v $T convert --teacher smollm2 --student $D/$step.yaml --quiet "$@" ;;
  step-time)  .venv/bin/python $D/distill_step_time.py $D/small2h-k8.yaml $D/k4.yaml $D/k0.yaml ;;
  decode)     .venv/bin/python $D/decode_compare.py "${@/%//student}" ;;
  decode-ab)  for th in 1 2; do .venv/bin/python $D/decode_step_ab.py $1/student --threads $th; done ;;
  bench)      $T bench distill --threads 2 ;;
  *) echo "usage: $0 demo|demo-k K|demo-even4|demo-32k [NAME]|<config>|step-time|decode RUN...|decode-ab RUN|bench"; exit 2 ;;
esac
