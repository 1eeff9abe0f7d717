#!/usr/bin/env bash
# Yes/no VQA on Fashion-MNIST with cross-Mamba fusion (issue 5, v2; docs/results.md). One thread per run.
#   bash experiments/vqa_yesno/run.sh cells [FRACTION]   # late / modulate / prefix on TransMamba and modulate on
#                                                        # scratch, seeds 0 and 1 (FRACTION 0.25: all four fusions x
#                                                        # both modes, seed 0); ~5-10 min per run at 100%
#   bash experiments/vqa_yesno/run.sh pipeline CLASSIFIER_DIR...   # the symbolic pipeline reference
# Needs runs/vision/teacher-fmnist (transmamba train-teacher --config configs/vision/teacher-fmnist.yaml).
# Table: .venv/bin/python experiments/vqa_yesno/table.py
# The recorded runs are fp32 (--train.amp none; today's default is amp auto). The three seed-0 TransMamba
# rows at 100% "v1" ran with --student.bias false --init.mixer mapped (the config now pins v2).
set -euo pipefail
cd "$(dirname "$0")/../.."
AMP=${AMP:---train.amp none}
cell() {  # fusion mode seed fraction
  local sub=""; [ "$4" = 1.0 ] || sub="f$4/"
  local out=runs/multimodal/${sub}vqa-$1-$2-s$3
  [ -f $out/result.json ] || .venv/bin/transmamba train-vqa --config configs/multimodal/vqa-fmnist.yaml \
    --fusion $1 --mode $2 --train.seed $3 --data.fraction $4 --out_dir $out --train.progress false $AMP
}
case ${1:-} in
  cells)
    F=${2:-1.0}
    if [ "$F" = 1.0 ]; then
      for s in 0 1; do for f in late modulate prefix; do cell $f transmamba $s $F; done; cell modulate scratch $s $F; done
    else
      for f in late modulate prefix; do for m in transmamba scratch; do cell $f $m 0 $F; done; done
    fi ;;
  pipeline) shift; .venv/bin/python experiments/vqa_yesno/pipeline_reference.py "$@" ;;
  *) echo "usage: $0 cells [FRACTION] | pipeline CLASSIFIER_DIR..."; exit 2 ;;
esac
