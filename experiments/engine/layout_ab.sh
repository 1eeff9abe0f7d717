#!/usr/bin/env bash
# Issue 37 A/B: the same commands on the code before the 2026-12-07 layout (a2d04fb) and at HEAD.
# First: git worktree add /tmp/old a2d04fb. Usage: bash experiments/engine/layout_ab.sh lm|convert|vision|retrieval (outputs in /tmp/ab).
set -uo pipefail
cd /work/main
export TRANSMAMBA_AMP=none HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=/tmp/ab; mkdir -p $OUT
PY=/work/main/.venv/bin/python
cli() { local side=$1; shift; if [ "$side" = old ]; then PYTHONPATH=/tmp/old/src $PY -m transmamba.cli "$@"; else $PY -m transmamba.cli "$@"; fi; }
SMALL=(--model.d_model 256 --model.n_layers 6 --model.n_heads 4 --model.n_kv_heads 4 --model.max_seq_len 256
       --train.seq_len 256 --train.batch_size 16 --train.tokens 150000 --train.warmup_steps 10
       --train.eval_every 40 --train.eval_batches 8 --train.ckpt_every 100000 --train.log_every 5 --train.amp none --train.progress false)
what=${1:-all}
for side in old new; do
  t0=$(date +%s)
  case $what in
  lm) cli $side train --config configs/lm/transmamba.yaml --model.schedule '{name: staggered, period: 6, span: 256}' "${SMALL[@]}" --out_dir $OUT/lm-$side > $OUT/lm-$side.log 2>&1 ;;
  convert) cli $side convert --teacher smollm2 --student configs/convert/demo.yaml --quiet --name demo-ab-$side --out_dir $OUT --train.amp none --train.tokens 4096 --recipe.local_tokens 4096 --data.cache_windows 16 --eval.ppl_contexts '[]' --eval.speed_contexts '[256]' --eval.prefill_contexts '[256]' --eval.prefill_rounds 1 --eval.speed_batches '[1]' > $OUT/convert-$side.log 2>&1 ;;
  vision) cli $side train-teacher --config configs/vision/teacher-fmnist.yaml --out_dir $OUT/vit-$side --train.max_steps 30 --train.amp none --train.progress false > $OUT/vit-$side.log 2>&1 && cli $side distill --config configs/vision/vim-fmnist.yaml --teacher $OUT/vit-$side --out_dir $OUT/vim-$side --data.fraction 0.05 --train.max_steps 30 --train.amp none --train.progress false > $OUT/vim-$side.log 2>&1 ;;
  retrieval) RA=(--retrieval.train_n 512 --retrieval.test_n 200 --train.max_steps 8 --train.amp none --train.progress false
                 --train.threads 1 --text.cache_dir $OUT/text-cache-$side)
    cli $side train-teacher --config configs/vision/teacher-fmnist.yaml --out_dir $OUT/vit-r-$side --train.max_steps 20 --train.amp none --train.progress false > $OUT/retrieval-$side.log 2>&1 &&
    cli $side train-retrieval --config configs/multimodal/retrieval-grids.yaml --role teacher --fusion none --teacher_init $OUT/vit-r-$side --out_dir $OUT/rt-$side "${RA[@]}" >> $OUT/retrieval-$side.log 2>&1 &&
    cli $side train-retrieval --config configs/multimodal/retrieval-grids.yaml --role student --mode transmamba --fusion cross_mamba --teacher_init $OUT/vit-r-$side --teacher $OUT/rt-$side/vit --out_dir $OUT/rs-$side "${RA[@]}" >> $OUT/retrieval-$side.log 2>&1 ;;
  esac
  echo "$what $side rc=$? $(( $(date +%s) - t0 )) s"
done
