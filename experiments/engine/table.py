"""One row per recipe re-run through the engine (experiments/engine/repro.sh; docs/results.md, issue 13):
`.venv/bin/python experiments/engine/table.py [runs/repro]`."""
import json
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/repro")


def load(p: Path):
    return json.loads(p.read_text()) if p.exists() else None


def pct(v):
    return f"{100 * v:.2f}"


rows = [
    ("LM pretraining (transmamba-depth, 150k tokens)", root / "lm-transmamba-depth/summary.json",
     lambda s: f"val loss {s['final_val_loss']:.4f}, ppl {s['final_val_ppl']:.1f}"),
    ("vision Adapt (ViM TransMamba, v2 recipe, 25%, seed 0)", root / "vim-transmamba-f0.25/result.json",
     lambda s: f"{pct(s['test_top1'])} (init {pct(s['init_top1'])})"),
    ("vision teacher (ViT teacher-fmnist.yaml)", Path("runs/vision/teacher-fmnist/result.json"),
     lambda s: pct(s["test_top1"])),
    ("VQA (modulate / TransMamba / seed 0)", root / "vqa-modulate-transmamba-s0/result.json",
     lambda s: pct(s["test_acc"])),
    ("convert (full, 30k tokens, smollm2-switch.yaml)", root / "convert/full/summary.json",
     lambda s: f"init {s['init_val_ppl']:.1f}, final {s['val_ppl']:.1f}"),
]
print("| recipe | through the engine |\n|---|---|")
for name, f, show in rows:
    s = load(f)
    print(f"| {name} | {show(s) if s else 'not run'} |")
