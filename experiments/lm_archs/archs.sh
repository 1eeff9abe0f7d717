#!/usr/bin/env bash
# Issue 4, experiments 1 and 2 at CPU scale: the four architectures at equal width, depth, parameters
# and tokens, then the TransPoint-schedule ablation. Results: runs/lm/<name>/summary.json, metrics.csv.
# Usage: bash experiments/lm_archs/archs.sh [tokens]   (default 150000)
set -euo pipefail
# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). AMP="--train.amp auto" runs today's default instead.
cd "$(dirname "$0")/../.."
TOKENS=${1:-150000}
SMALL="--model.d_model 256 --model.n_layers 6 --model.n_heads 4 --model.n_kv_heads 4 --model.max_seq_len 256
       --train.seq_len 256 --train.batch_size 16 --train.tokens $TOKENS --train.warmup_steps 10
       --train.eval_every 40 --train.eval_batches 8 --train.ckpt_every 100000 --train.log_every 5
       ${AMP:---train.amp none}"
run() { name=$1; shift; [ -f runs/lm/$name/summary.json ] && return 0
        .venv/bin/transmamba train "$@" $SMALL --out_dir runs/lm/$name; }
run transformer --config configs/lm/transformer.yaml
run mamba2      --config configs/lm/mamba2.yaml
run hybrid      --config configs/lm/hybrid.yaml --model.hybrid_attn_every 3
run transmamba-staggered --config configs/lm/transmamba.yaml --model.schedule '{name: staggered, period: 6, span: 256}'
run transmamba-half      --config configs/lm/transmamba.yaml --model.schedule '{name: fraction, f: 0.5}'
run transmamba-depth     --config configs/lm/transmamba.yaml --model.schedule '{name: depth, start: 0, end: 256}'
run transmamba-random    --config configs/lm/transmamba.yaml --model.schedule '{name: random, choices: [0, 64, 128, 192, 256], eval: 128}'
