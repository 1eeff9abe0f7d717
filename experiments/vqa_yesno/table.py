"""Yes/no VQA test accuracy per run (docs/results.md, issue 5 v2 B), from runs/multimodal/[f0.25/]vqa-*/result.json:
`.venv/bin/python experiments/vqa_yesno/table.py`."""
import json
from pathlib import Path

print("| run | test acc | class q / attribute q | fusion params |\n|---|---|---|---|")
for f in sorted(Path("runs/multimodal").glob("vqa-*/result.json")) + sorted(Path("runs/multimodal/f0.25").glob("vqa-*/result.json")):
    d = json.loads(f.read_text())
    pct = lambda k: f"{100 * d[k]:.2f}" if d.get(k) is not None else ""
    print(f"| {f.parent.relative_to('runs/multimodal')} | {pct('test_acc')} | {pct('test_acc_class_q')} / {pct('test_acc_attr_q')} "
          f"| {d.get('params_fusion', '')} |")
