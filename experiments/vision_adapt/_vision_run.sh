# Sourced by the vision experiment scripts (run from the repository root).

# fp32 as recorded: these runs predate 2026-12-07, when `train.amp: auto` (bf16 on a CPU with fast bf16) became
# every recipe's default (commit 952efb3). AMP="--train.amp auto" runs today's default instead.
AMP=${AMP:---train.amp none}

# vision_run OUT ARCH MODE FRACTION [more distill args...]: one `transmamba distill` run of
# configs/vision/ARCH-fmnist.yaml into OUT, logged to OUT.log; skipped if OUT/result.json exists.
vision_run() {
  local out=$1 arch=$2 mode=$3 frac=$4; shift 4
  if [ -f "$out/result.json" ]; then echo "skip $out"; return; fi
  mkdir -p "$(dirname "$out")"; echo "$(date -u +%T) start $out"
  .venv/bin/transmamba distill --config configs/vision/$arch-fmnist.yaml --mode $mode \
    --data.fraction $frac --out_dir $out --train.progress false $AMP "$@" > $out.log 2>&1
  echo "$(date -u +%T) done $out rc=$?"
}

# strong_teacher DIR: train configs/vision/teacher-fmnist-strong.yaml into DIR unless it is there.
strong_teacher() {
  [ -f $1/result.json ] || .venv/bin/transmamba train-teacher \
    --config configs/vision/teacher-fmnist-strong.yaml --out_dir $1 --train.progress false $AMP
}

# The student configs turned on block calibration (adapt/block_calibration.py) on 2026-11-30; the
# scripts whose runs came before pin it off so that they still reproduce what docs/results.md shows.
PRE_V3="--init.calibrate false --init.calibrate_mlp false"
