"""The grid-VQA tables of the issue 17 runs (docs/results.md): `.venv/bin/python experiments/grid_vqa/table.py [runs/multimodal/i17]`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from multimodal_table import vqa_tables  # noqa: E402

vqa_tables(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/multimodal/i17"))
