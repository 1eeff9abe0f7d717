"""Markdown tables from run summaries: `python experiments/summarize.py lm|convert [runs root]`."""

import json
import sys
from pathlib import Path


def lm_table(root="runs/lm"):
    print("| run | arch | schedule | params | tokens | val loss | val ppl | best val loss | train tok/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in sorted(Path(root).glob("*/summary.json")):
        s = json.loads(p.read_text())
        cfg = json.loads((p.parent / "checkpoints").glob("*/config.json").__next__().read_text())
        sched = cfg["model"].get("schedule") if s["arch"] == "transmamba" else ""
        print(f"| {p.parent.name} | {s['arch']} | {sched} | {s['params'] / 1e6:.2f}M | {s['tokens']} | "
              f"{s['final_val_loss']:.4f} | {s['final_val_ppl']:.1f} | {s['best_val_loss']:.4f} | "
              f"{s['tok_per_s']:.0f} | {s['elapsed_s']:.0f} |")


def convert_table(root="runs/convert"):
    print("| run | tokens | init ppl | final ppl | teacher ppl | final / teacher | P-sweep ppl (P: ppl) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for p in sorted(Path(root).glob("*/summary.json")):
        s = json.loads(p.read_text())
        sweep = ", ".join(f"{k}: {v:.0f}" for k, v in s["transpoint_sweep_ppl"].items())
        print(f"| {s['name']} | {s['tokens']} | {s['init_val_ppl']:.1f} | {s['val_ppl']:.1f} | "
              f"{s['teacher_val_ppl']:.2f} | {s['val_ppl'] / s['teacher_val_ppl']:.1f}x | {sweep} | {s['train_s']:.0f} |")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "lm"
    {"lm": lm_table, "convert": convert_table}[what](*sys.argv[2:3])
