"""Teacher-vs-student rows of convert runs (docs/results.md, hybrid students and the demo), from each
run's summary.json: held-out perplexity per context (student / teacher), decode tok/s ratio per
batch at each context, cache MB.

    .venv/bin/python experiments/hybrid_demo/table.py [RUN_DIR ...]   (default: the runs of run.sh under runs/)
"""
import json
import sys
from pathlib import Path

RUNS = ["demo", "demo-k2", "demo-even4", "demo-k8", "long50", "long50-k4", "small-k4", "small-k4-nolocal",
        "small2h-k8", "demo-e2e", "convert-wide/wide-local", "convert-wide/wide-local-mixer"]
dirs = [Path(d) for d in sys.argv[1:]] or [Path("runs") / r for r in RUNS]
print("| run | attention layers | held-out ppl (context: student / teacher = ratio) | decode (context, batch: ratio) "
      "| cache MB student / teacher | training s |")
print("|---|---|---|---|---|---|")
for d in dirs:
    f = d / "summary.json"
    if not f.exists():
        print(f"| {d} | not run | | | | |")
        continue
    s = json.loads(f.read_text())
    layers = s.get("attention_layers") or s.get("keep_attention_layers") or ""
    ppl = "; ".join(f"{L}: {v['student']:.2f} / {v['teacher']:.2f} = {v['student'] / v['teacher']:.2f}x"
                    for L, v in s.get("ppl_by_context", {}).items())
    speed = s.get("speed") or []
    dec = "; ".join(f"{r['context']}, {r.get('batch', 1)}: {r['student_tok_s'] / r['teacher_tok_s']:.2f}x" for r in speed)
    cache = "; ".join(f"{r['student_cache_mb']:.1f} / {r['teacher_cache_mb']:.1f}" for r in speed)
    train = sum(s.get(k) or 0 for k in ("local_train_s", "keep_attention_s", "train_s"))
    print(f"| {d.name} | {layers} | {ppl} | {dec} | {cache} | {train:.0f} |")
