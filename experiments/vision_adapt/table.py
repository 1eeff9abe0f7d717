"""The vision Adapt tables (docs/results.md, issue 5), from runs/vision/*/result.json:

    .venv/bin/python experiments/vision_adapt/table.py calibration|grid-v2|strong-teacher|seeds
"""
import runpy
import sys
from pathlib import Path

SCRIPTS = {"calibration": "calibration_table.py", "grid-v2": "grid_v2_table.py",
           "strong-teacher": "strong_teacher_table.py", "seeds": "seeds_table.py"}
which = sys.argv[1] if len(sys.argv) > 1 else "calibration"
if which not in SCRIPTS:
    sys.exit(f"error: unknown table {which!r}; one of {', '.join(SCRIPTS)}")
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
sys.argv = [str(here / SCRIPTS[which])] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
