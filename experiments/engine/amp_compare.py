"""fp32 vs bf16 through the engine: one table (train loss every 5 steps, final val) and one plot.

    .venv/bin/python experiments/engine/amp_compare.py RUN_FP32 RUN_BF16 [OUT.png]
RUN_*: run directories with metrics.csv and summary.json (written by experiments/engine/repro.sh)."""

import json
import sys
from pathlib import Path

from transmamba.training.metrics import plot_loss_curves, read_metrics

a, b = Path(sys.argv[1]), Path(sys.argv[2])
png = Path(sys.argv[3]) if len(sys.argv) > 3 else a.parent / f"{a.name}-vs-bf16.png"
ra, rb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
print("| step | fp32 train loss | bf16 train loss | fp32 val loss | bf16 val loss |")
print("|---|---|---|---|---|")
for x, y in zip(ra, rb):
    if x["val_loss"] is not None or x["step"] % 5 == 0 or x["step"] == 1:
        fmt = lambda v: "" if v is None else f"{v:.4f}"
        print(f"| {x['step']} | {fmt(x['train_loss'])} | {fmt(y['train_loss'])} | {fmt(x['val_loss'])} | {fmt(y['val_loss'])} |")
for r in (a, b):
    s = json.loads((r / "summary.json").read_text())
    keys = [k for k in ("final_val_ppl", "val_ppl", "tok_per_s", "elapsed_s", "train_s") if k in s]
    print(f"{r.name}: " + ", ".join(f"{k} {s[k]:.4g}" for k in keys))
plot_loss_curves({"fp32": a / "metrics.csv", "bf16": b / "metrics.csv"}, png, title=f"{a.name}: fp32 vs bf16")
print(png)
