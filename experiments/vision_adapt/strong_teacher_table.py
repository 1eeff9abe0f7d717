"""Markdown table of runs/vision/strong-teacher (experiments/vision_adapt/strong_teacher.sh), test top-1 in %.
The default-teacher rows it is compared with are the v2 grid's (docs/results.md)."""
import sys
from pathlib import Path

from _vision_results import read_result

ROOT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "runs/vision/strong-teacher"


def get(run, key="test_top1"):
    v = read_result(ROOT / run, key)
    return "—" if v is None else f"{100 * v:.2f}"


print("| student | scratch 100% | TransMamba 25% | 50% | 50% + logit KD | 100% | init_top1 25/50/100% | teacher |")
print("|---|---|---|---|---|---|---|---|")
for a in ("vim", "vmamba", "plainmamba"):
    tm = [f"{a}-transmamba-f{f}" for f in ("0.25", "0.5", "1.0")]
    print(f"| {a} | {get(f'{a}-scratch-f1.0')} | {get(tm[0])} | {get(tm[1])} | {get(tm[1] + '-kd')} | "
          f"{get(tm[2])} | {' / '.join(get(r, 'init_top1') for r in tm)} | {get(tm[1], 'teacher_top1')} |")
