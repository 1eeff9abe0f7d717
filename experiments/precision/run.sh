#!/usr/bin/env bash
# Precision chosen from the hardware, `amp: auto` (issue 35; docs/results.md). Prefix AVX2=1 to emulate
# an AVX2-only CPU on an AVX512-BF16 one (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2).
#   env        transmamba env (what auto picks here, and why)
#   demo       /usr/bin/time -v make demo   (the recorded rows ran from empty caches: `rm -rf runs cache` first,
#              which this script does not do; ~7.5 min, ~9 min emulated AVX2)
#   bench      transmamba bench distill --json (one distillation step, 8 x 256 tokens, 2 threads)
#   inference  fp32 vs bf16 autocast at inference, student and teacher (inference_ab.py)
#   profile    torch.profiler on one fp32 distillation step (profile_fp32_step.py; recorded with AVX2=1)
# No table script: each command prints its own numbers (the make demo rows add /usr/bin/time's wall).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -z "${AVX2:-}" ] || export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
case ${1:-} in
  env)       .venv/bin/transmamba env ;;
  demo)      /usr/bin/time -v make demo ;;
  bench)     .venv/bin/transmamba bench distill --json ;;
  inference) .venv/bin/python experiments/precision/inference_ab.py ;;
  profile)   .venv/bin/python experiments/precision/profile_fp32_step.py ;;
  *) echo "usage: [AVX2=1] $0 env|demo|bench|inference|profile"; exit 2 ;;
esac
