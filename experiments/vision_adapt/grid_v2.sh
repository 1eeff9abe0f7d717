#!/bin/bash
# One training process at a time (issue 5, vision Adapt, mixer init v2). Run from the repo root.
cd "$(dirname "$0")/../.."
source experiments/vision_adapt/_vision_run.sh
run() {  # arch mode fraction
  vision_run runs/vision/main-v2/$1-$2-f$3 $1 $2 $3 --init.layers 2 $PRE_V3
}
for a in vim vmamba plainmamba; do run $a transmamba 0.5; done
for a in vim vmamba plainmamba; do run $a scratch 1.0; done
for a in vim vmamba plainmamba; do run $a transmamba 0.25; done
for a in vim vmamba plainmamba; do run $a transmamba 1.0; done
for a in vim vmamba plainmamba; do run $a scratch 0.5; done
for a in vim vmamba plainmamba; do run $a scratch 0.25; done
