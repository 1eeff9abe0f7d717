"""The data-sources table (docs/results.md, "Distilled on what"): three demo-recipe students at equal
tokens (Shakespeare only / teacher samples only / 50:50), judged by `transmamba eval --suite quality`
on held-out Shakespeare, on out-of-domain text (software licences: in neither source) and by
generation against the teacher. Reads runs/data_sources/<name>/student/eval/results.json.

    .venv/bin/python experiments/data_sources/table.py [RUN_ROOT]   (default runs/data_sources)
"""
import json
import sys
from pathlib import Path

NAMES = [("ds-shakespeare", "Shakespeare only"), ("ds-samples", "teacher samples only"), ("ds-mix", "50:50 mixture")]
root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/data_sources")


def cell(r):
    return f"{r['acc']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]"


rows, ratios = [], {}
for name, label in NAMES:
    f = root / name / "student" / "eval" / "results.json"
    if not f.exists():
        rows.append(f"| {label} | not run | | | | | |")
        continue
    r = json.loads(f.read_text())
    t = r["table"]
    shak = t["ppl@256"]["student"] / t["ppl@256"]["teacher"]
    shak1k = t["ppl@1024"]["student"] / t["ppl@1024"]["teacher"]
    ood = t["text_ppl@256"]["student"] / t["text_ppl@256"]["teacher"]
    ratios[name] = (shak, ood, t["ppl@256"]["student"])
    agree = {(a["set"], a["tokens"]): a for a in r["generation"]["agreement"]}
    a32 = [agree[(s, 32)] for s in ("plain", "chat") if (s, 32) in agree]
    prefix = " / ".join(f"{a['prefix']:.2f}" for a in a32)
    task = {x["task"]: x for x in r["generation"]["task"]}["all"]
    pct = "" if task["pct_of_teacher"] is None else f"{task['pct_of_teacher']:.0f}%"
    rows.append(f"| {label} | {shak:.3f} | {shak1k:.3f} | {ood:.3f} | {prefix} | {cell(task['student'])} "
                f"(teacher {cell(task['teacher'])}) | {pct} |")
print("| distilled on | held-out Shakespeare ppl / teacher, 256 | same, 1024 | out-of-domain ppl / teacher, 256 "
      "| greedy prefix agreement at 32 tokens, plain / chat prompts | generative task exact match (95% CI) "
      "| task, % of teacher |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
if "ds-shakespeare" in ratios and "ds-mix" in ratios:
    (s_in, s_ood, s_ppl), (m_in, m_ood, m_ppl) = ratios["ds-shakespeare"], ratios["ds-mix"]
    closer = (abs(s_ood - 1) - abs(m_ood - 1)) / abs(s_ood - 1)
    print(f"\nout of domain, the mixture's ratio is {100 * closer:.0f}% closer to 1 than Shakespeare-only's "
          f"(target >= 20%); on held-out Shakespeare its ppl is {100 * (m_ppl / s_ppl - 1):+.1f}% vs "
          f"Shakespeare-only's (target <= +5%)")
