"""The retrieval-heads table (docs/results.md, issue 38 pilot): students of one budget that differ only
in which heads keep attention, judged by `transmamba eval --suite retrieval` (passkey at 1k / 2k, 10
trials x 5 depths; the key-value probe; perplexity at 1k / 4k; decode speed and cache at 4k, fp32).
Reads runs/retrieval_heads/<name>/student/eval/results.json and <name>/summary.json.

    .venv/bin/python experiments/retrieval_heads/table.py [RUN_ROOT]   (default runs/retrieval_heads)
"""
import json
import sys
from pathlib import Path

NAMES = ["rh-k0", "rh-k6-retrieval", "rh-k6-random", "rh-k6-switch-cost", "rh-layers2"]
root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/retrieval_heads")


def cell(r):
    return f"{r['acc']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"


def kept(s):
    if s.get("kept_heads"):
        return f"{len(s['kept_heads'])} heads " + " ".join(f"{i}.{j}" for i, j in s["kept_heads"])
    if s.get("attention_layers"):
        return "layers " + ", ".join(map(str, s["attention_layers"]))
    return "none"


print("| student | kept on attention | passkey 1k | passkey 2k | kv probe 1k / 2k | ppl 1k / 4k, x teacher "
      "| cache MB at 4k, x teacher | decode tok/s at 4k, x teacher |")
print("|---|---|---|---|---|---|---|---|")
teacher = None
for name in NAMES:
    f, sf = root / name / "student" / "eval" / "results.json", root / name / "summary.json"
    if not f.exists() or not sf.exists():
        print(f"| {name} | not run | | | | | | |")
        continue
    r, s = json.loads(f.read_text()), json.loads(sf.read_text())
    rows = {(x["task"], x["length"]): x for x in r["retrieval"]}
    pk = [rows.get(("passkey", L)) for L in (1024, 2048)]
    probe = " / ".join(f"{rows[('probe_kv', L)]['student']['acc']:.2f}" for L in (1024, 2048) if ("probe_kv", L) in rows)
    t = r["table"]
    ppl = " / ".join(f"{t[k]['student'] / t[k]['teacher']:.2f}" for k in ("ppl@1024", "ppl@4096") if k in t)
    cache = t.get("cache_mb@4096")
    dec = t.get("decode_ms@4096")
    pk_cells = [("" if x is None else f"{cell(x['student'])}, {x['pct_of_teacher'] or 0:.0f}% of teacher") for x in pk]
    cache_cell = "" if not cache else (f"{cache['student']:.1f} / {cache['teacher']:.1f} = "
                                       f"{cache['student'] / cache['teacher']:.3f}")
    dec_cell = "" if not dec else f"{dec['teacher'] / dec['student']:.2f}"
    print(f"| {name} | {kept(s)} | {pk_cells[0]} | {pk_cells[1]} | {probe} | {ppl} | {cache_cell} | {dec_cell} |")
    teacher = teacher or {L: rows[("passkey", L)]["teacher"] for L in (1024, 2048) if ("passkey", L) in rows}
if teacher:
    print("\nteacher passkey: " + "; ".join(f"{L}: {cell(v)}" for L, v in teacher.items() if v))
