"""Markdown table of the LM runs' summaries (docs/results.md, four LM architectures):
`.venv/bin/python experiments/lm_archs/table.py [runs root, default runs/lm]`."""

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


if __name__ == "__main__":
    lm_table(*sys.argv[1:2])
