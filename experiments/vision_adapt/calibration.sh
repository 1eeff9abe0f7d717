#!/bin/bash
# Issue 5, v3: least-squares calibration of the copied blocks (adapt/block_calibration.py) against
# the 50%-vs-100% target. Strong teacher, one epoch, one thread per run, two runs at a time.
# Run from the repo root:
#   bash experiments/vision_adapt/calibration.sh pilot      # seed-1 levers on ViM/PlainMamba/VMamba, 50% data
#   bash experiments/vision_adapt/calibration.sh seeds      # the chosen recipe (CAL), seeds 0 and 2 (VMamba: 0-2), 50% data
#   bash experiments/vision_adapt/calibration.sh fractions  # CAL at 25% and 100%, scratch at 25% and 50% (seed 0)
#   bash experiments/vision_adapt/calibration.sh ablation   # CAL without distillation; CAL with n = 2 (seed 1)
#   bash experiments/vision_adapt/calibration.sh video      # VideoMamba: scratch, TransMamba, TransMamba + CAL
#   bash experiments/vision_adapt/calibration.sh epochs3    # ViM, CAL at 50% for 3 epochs (two teachers)
# Table: .venv/bin/python experiments/vision_adapt/calibration_table.py
# Scratch at 100% (seeds 0-2) comes from runs/vision/strong-teacher and runs/vision/seeds.
cd "$(dirname "$0")/../.."
source experiments/vision_adapt/_vision_run.sh
T=${TEACHER:-runs/vision/teacher-fmnist-strong}
R=${ROOT:-runs/vision/levers}
CAL="--init.layers 4 --init.calibrate true --init.calibrate_mlp true"  # the recipe the pilot chose
mkdir -p $R
strong_teacher $T
run() {  # name arch mode fraction seed [args...]: one run, two at a time
  local name=$1 arch=$2 mode=$3 frac=$4 seed=$5; shift 5
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 5; done
  vision_run $R/$name $arch $mode $frac --teacher $T --data.seed $seed --train.seed $seed "$@" &
}
case $1 in
  pilot)
    N="--init.calibrate false --init.calibrate_mlp false"  # (off, as the configs were when it ran)
    run vim-n4-a0.9-s1 vim transmamba 0.5 1 --init.layers 4 $N
    run vim-n4-a0.5-s1 vim transmamba 0.5 1 --init.layers 4 $N --distill.alpha 0.5
    run vim-n4-lr0.3-s1 vim transmamba 0.5 1 --init.layers 4 $N --init.lr_scale 0.3
    run vim-n4-lr0.1-s1 vim transmamba 0.5 1 --init.layers 4 $N --init.lr_scale 0.1
    O="--init.calibrate true --init.calibrate_mlp false"  # out_proj fit only
    run vim-n2-cal-s1 vim transmamba 0.5 1 --init.layers 2 $O
    run vim-n4-cal-s1 vim transmamba 0.5 1 --init.layers 4 $O
    run vim-n4-cal-a0.5-s1 vim transmamba 0.5 1 --init.layers 4 $O --distill.alpha 0.5
    run vim-n4-calh-s1 vim transmamba 0.5 1 --init.layers 4 $O --init.calibrate_head true
    run vim-n4-calm-s1 vim transmamba 0.5 1 $CAL
    run plainmamba-n4-cal-s1 plainmamba transmamba 0.5 1 --init.layers 4 $O
    run plainmamba-n4-calh-s1 plainmamba transmamba 0.5 1 --init.layers 4 $O --init.calibrate_head true
    run plainmamba-n4-calm-s1 plainmamba transmamba 0.5 1 $CAL
    run vmamba-n4-cal-s1 vmamba transmamba 0.5 1 --init.layers 4 $O ;;
  seeds)
    for s in 0 2; do for a in vim plainmamba vmamba; do
      run $a-n4-calm-s$s $a transmamba 0.5 $s $CAL
    done; done
    run vmamba-n4-calm-s1 vmamba transmamba 0.5 1 $CAL ;;  # its pilot ran without the (no-op) MLP flag
  fractions)
    for a in vim plainmamba vmamba; do
      run $a-n4-calm-f0.25-s0 $a transmamba 0.25 0 $CAL
      run $a-scratch-f0.25-s0 $a scratch 0.25 0
      run $a-scratch-f0.5-s0 $a scratch 0.5 0
      run $a-n4-calm-f1.0-s0 $a transmamba 1.0 0 $CAL
    done ;;
  ablation)  # what CAL needs: its distillation, and n = L
    run vim-n4-calm-nodistill-s1 vim transmamba 0.5 1 $CAL --distill.enabled false
    run plainmamba-n4-calm-nodistill-s1 plainmamba transmamba 0.5 1 $CAL --distill.enabled false
    run vim-n2-calm-s1 vim transmamba 0.5 1 --init.layers 2 --init.calibrate true --init.calibrate_mlp true ;;
  video)  # VideoMamba on moving Fashion-MNIST (its own config and frame-wise teacher), seed 0
    VT=runs/vision/teacher-moving-fmnist
    [ -f $VT/result.json ] || .venv/bin/transmamba train-teacher \
      --config configs/vision/teacher-moving-fmnist.yaml --train.progress false $AMP
    for m in scratch transmamba transmamba-cal; do
      out=$R/videomamba-$m
      [ -f $out/result.json ] && continue
      extra=(); [ $m = transmamba-cal ] && extra=(--init.calibrate true --init.calibrate_mlp true)
      while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 5; done
      .venv/bin/transmamba distill --config configs/vision/videomamba-moving-fmnist.yaml \
        --mode ${m%-cal} --out_dir $out --train.progress false $AMP "${extra[@]}" > $out.log 2>&1 &
    done ;;
  epochs3)  # ViM, 3 epochs, 50%: with the strong teacher and with the default 5-epoch one
    run vim-n4-calm-ep3-s0 vim transmamba 0.5 0 $CAL --train.epochs 3
    [ -f runs/vision/teacher-fmnist/result.json ] || .venv/bin/transmamba train-teacher \
      --config configs/vision/teacher-fmnist.yaml --train.progress false $AMP
    run vim-n4-calm-ep3-t5-s0 vim transmamba 0.5 0 $CAL --train.epochs 3 --teacher runs/vision/teacher-fmnist ;;
  *) echo "usage: $0 pilot|seeds|fractions|ablation|video|epochs3"; exit 2 ;;
esac
wait
