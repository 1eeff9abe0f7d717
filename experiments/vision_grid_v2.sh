#!/bin/bash
# One training process at a time (issue 5, vision Adapt, mixer init v2). Run from the repo root.
cd "$(dirname "$0")/.."
run() {  # arch mode fraction
  local out=runs/vision/main-v2/$1-$2-f$3
  if [ -f "$out/result.json" ]; then echo "skip $out"; return; fi
  echo "$(date -u +%T) start $out"
  .venv/bin/python -m transmamba.train_vision distill --config configs/vision/$1-fmnist.yaml \
    --mode $2 --data.fraction $3 --init.layers 2 --init.calibrate false --init.calibrate_mlp false \
    --out_dir $out --train.progress false > $out.log 2>&1
  echo "$(date -u +%T) done $out rc=$?"
}
for a in vim vmamba plainmamba; do run $a transmamba 0.5; done
for a in vim vmamba plainmamba; do run $a scratch 1.0; done
for a in vim vmamba plainmamba; do run $a transmamba 0.25; done
for a in vim vmamba plainmamba; do run $a transmamba 1.0; done
for a in vim vmamba plainmamba; do run $a scratch 0.5; done
for a in vim vmamba plainmamba; do run $a scratch 0.25; done
