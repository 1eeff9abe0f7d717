"""Reading vision runs' result.json for the experiment table scripts."""
import json
from pathlib import Path


def read_result(run: Path, key: str = "test_top1"):
    """`key` of run/result.json, or None if the run (or the key) is missing."""
    f = Path(run) / "result.json"
    return json.loads(f.read_text()).get(key) if f.exists() else None
