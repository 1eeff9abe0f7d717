#!/usr/bin/env bash
# Issue 13: one table row per recipe re-run through the one engine (transmamba.training.engine), and
# fp32 vs bf16 loss curves for one LM and one distillation run. One heavy job at a time.
# Results: runs/repro/<name>/ (summary.json / result.json, metrics.csv, loss.png); logs runs/repro/<name>.log.
# Usage: bash experiments/engine/repro.sh [step ...]   steps: lm lm-bf16 teacher vim vqa convert convert-bf16
set -uo pipefail
# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). The bf16 rows name bf16.
cd "$(dirname "$0")/../.."
OUT=runs/repro
mkdir -p $OUT
T=.venv/bin/transmamba
SMALL="--model.d_model 256 --model.n_layers 6 --model.n_heads 4 --model.n_kv_heads 4 --model.max_seq_len 256
       --train.seq_len 256 --train.batch_size 16 --train.tokens 150000 --train.warmup_steps 10
       --train.eval_every 40 --train.eval_batches 8 --train.ckpt_every 100000 --train.log_every 5"
FP32="--train.amp none"
step() { name=$1; shift; echo "$(date -u +%T) start $name"; "$@" > $OUT/$name.log 2>&1; echo "$(date -u +%T) done $name rc=$?"; }
STEPS="$*"
has() { [ -z "$STEPS" ] || [[ " $STEPS " == *" $1 "* ]]; }
has lm && step lm $T train --config configs/lm/transmamba.yaml --model.schedule '{name: depth, start: 0, end: 256}' \
    $SMALL --out_dir $OUT/lm-transmamba-depth --train.progress false $FP32
has lm-bf16 && step lm-bf16 $T train --config configs/lm/transmamba.yaml --model.schedule '{name: depth, start: 0, end: 256}' \
    $SMALL --out_dir $OUT/lm-transmamba-depth-bf16 --train.amp bf16 --train.progress false
has teacher && { [ -d /usr/share/datasets/fashion-mnist ] || make fmnist; } && \
    step teacher $T train-teacher --config configs/vision/teacher-fmnist.yaml --out_dir runs/vision/teacher-fmnist \
    --train.progress false $FP32
has vim && step vim $T distill --config configs/vision/vim-fmnist.yaml --mode transmamba --data.fraction 0.25 \
    --init.layers 2 --init.calibrate false --init.calibrate_mlp false --out_dir $OUT/vim-transmamba-f0.25 \
    --train.progress false $FP32
has vqa && step vqa $T train-vqa --config configs/multimodal/vqa-fmnist.yaml --fusion modulate --mode transmamba \
    --train.seed 0 --out_dir $OUT/vqa-modulate-transmamba-s0 --train.progress false $FP32
has convert && step convert $T convert --teacher smollm2 --student configs/convert/smollm2-switch.yaml --name full \
    --out_dir $OUT/convert --train.tokens 30000 --quiet $FP32
has convert-bf16 && step convert-bf16 $T convert --teacher smollm2 --student configs/convert/smollm2-switch.yaml \
    --name full-bf16 --out_dir $OUT/convert --train.tokens 30000 --train.amp bf16 --quiet
