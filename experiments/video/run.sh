#!/usr/bin/env bash
# Video Adapt: VideoMamba on moving Fashion-MNIST (issue 5; docs/results.md). One thread per run.
#   bash experiments/video/run.sh class          # label = class: scratch / TransMamba / TransMamba + CAL, seed 0
#                                                # (= vision_adapt/calibration.sh video; ~2-4 min per run)
#   bash experiments/video/run.sh direction [3]  # label = class x direction (80 classes), 1 or 3 epochs, then
#                                                # the class / direction split of the predictions (~2-12 min per run)
# Table: .venv/bin/python experiments/video/table.py
# The recorded runs are fp32 (--train.amp none; today's default is amp auto).
set -euo pipefail
cd "$(dirname "$0")/../.."
T=.venv/bin/transmamba
AMP=${AMP:---train.amp none}
case ${1:-} in
  class) bash experiments/vision_adapt/calibration.sh video ;;
  direction)
    EP=${2:-1}; R=runs/vision/video-dir; [ "$EP" = 1 ] || R=$R/ep$EP
    [ -f runs/vision/teacher-moving-fmnist/result.json ] || $T train-teacher \
      --config configs/vision/teacher-moving-fmnist.yaml --train.progress false $AMP
    for m in scratch transmamba; do
      [ -f $R/videomamba-$m/result.json ] || $T distill --config configs/vision/videomamba-moving-fmnist.yaml \
        --mode $m --data.video.label_mode class_direction --train.epochs $EP --out_dir $R/videomamba-$m \
        --train.progress false $AMP
    done
    .venv/bin/python experiments/video/direction_split.py $R/videomamba-scratch $R/videomamba-transmamba ;;
  *) echo "usage: $0 class|direction [epochs]"; exit 2 ;;
esac
