"""Markdown table of convert runs' summaries (docs/results.md, convert SmolLM2):
`.venv/bin/python experiments/convert_smollm2/table.py [runs root, default runs/convert]`."""

import json
import sys
from pathlib import Path


def convert_table(root="runs/convert"):
    print("| run | tokens | init ppl | final ppl | teacher ppl | final / teacher | P-sweep ppl (P: ppl) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for p in sorted(Path(root).glob("*/summary.json")):
        s = json.loads(p.read_text())
        sweep = ", ".join(f"{k}: {v:.0f}" for k, v in s["transpoint_sweep_ppl"].items())
        print(f"| {s['name']} | {s['tokens']} | {s['init_val_ppl']:.1f} | {s['val_ppl']:.1f} | "
              f"{s['teacher_val_ppl']:.2f} | {s['val_ppl'] / s['teacher_val_ppl']:.1f}x | {sweep} | {s['train_s']:.0f} |")


if __name__ == "__main__":
    convert_table(*sys.argv[1:2])
