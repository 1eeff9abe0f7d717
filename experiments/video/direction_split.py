"""Split class_direction test accuracy into class part (pred // 8) and direction part (pred % 8)."""
import json
import sys
from pathlib import Path

import torch

from transmamba.models.vision import load_student
from transmamba.recipes.vision import load_data

torch.set_num_threads(1)
rows = {}
data = None
for d in sys.argv[1:]:
    d = Path(d)
    cfg = json.loads((d / "result.json").read_text())["config"]
    if data is None:
        data = load_data(cfg["data"])
    x, y = data["test"]
    model = load_student(d).eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 250]).argmax(-1) for i in range(0, len(x), 250)])
    rows[d.name] = {"top1": float((pred == y).float().mean()),
                    "class_acc": float((pred // 8 == y // 8).float().mean()),
                    "dir_acc": float((pred % 8 == y % 8).float().mean()),
                    "dir_acc_given_class_right": float((pred % 8 == y % 8)[pred // 8 == y // 8].float().mean())}
    print(d.name, rows[d.name], flush=True)
json.dump(rows, open(Path(sys.argv[1]).parent / "analysis.json", "w"), indent=1)
