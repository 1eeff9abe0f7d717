"""The VideoMamba tables (docs/results.md, video): label = class (runs/vision/levers/videomamba-*), and
label = class x direction with its class / direction split (runs/vision/video-dir[/ep3]/analysis.json).

    .venv/bin/python experiments/video/table.py
"""
import json
from pathlib import Path


def load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def top1(r) -> str:
    return f"{100 * r['test_top1']:.2f}" if r else "not run"


print("| run (label = class, seed 0) | top-1 (init_top1) |\n|---|---|")
for m in ("scratch", "transmamba", "transmamba-cal"):
    r = load(Path(f"runs/vision/levers/videomamba-{m}/result.json"))
    init = f" ({100 * r['init_top1']:.1f})" if r and r.get("init_top1") is not None and m != "scratch" else ""
    print(f"| {m} | {top1(r)}{init} |")
print("\n| mode | epochs | top-1 (80-way) | class | direction | direction, given the class is right |\n|---|---|---|---|---|---|")
for ep, sub in ((1, ""), (3, "ep3/")):
    a = load(Path(f"runs/vision/video-dir/{sub}analysis.json")) or {}
    for m in ("scratch", "transmamba"):
        r = a.get(f"videomamba-{m}")
        cells = (" | ".join(f"{100 * r[k]:.2f}" for k in ("top1", "class_acc", "dir_acc", "dir_acc_given_class_right"))
                 if r else "not run | | |")
        print(f"| {m} | {ep} | {cells} |")
