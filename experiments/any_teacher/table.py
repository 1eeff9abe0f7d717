"""The any-teacher convert report's table (docs/results.md, issue 36), as `transmamba convert` wrote it:
`.venv/bin/python experiments/any_teacher/table.py [runs/any_teacher/qwen3-own-tokenizer]`."""
import sys
from pathlib import Path

run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/any_teacher/qwen3-own-tokenizer")
rep = run / "report.md"
print(rep.read_text() if rep.exists() else f"not run: {rep}")
