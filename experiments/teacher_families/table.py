"""The teacher-families table (docs/results.md, issue 14), as teacher_families.py wrote it next to its
raw rows: `.venv/bin/python experiments/teacher_families/table.py [runs/teacher_families]`."""
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/teacher_families")
print((out / "table.md").read_text() if (out / "table.md").exists() else f"not run: {out}/table.md")
