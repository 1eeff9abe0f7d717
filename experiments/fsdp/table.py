"""The measured rows of docs/scale.md from experiments/fsdp/run.sh's outputs (default runs/fsdp)."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fsdp")
ac = out / "ac_memory.json"
if ac.exists():
    r = json.loads(ac.read_text())
    print("| activation checkpointing | params | tokens | peak RSS (MiB) | RSS before steps | peak - before | s/step | losses |")
    print("|---|---|---|---|---|---|---|---|")
    for k in ("without", "with"):
        x = r[k]
        print(f"| {k} | {x['params']:,} | {x['batch']} x {x['seq_len']} | {x['peak_rss_mb']:.0f} | "
              f"{x['rss_before_steps_mb']:.0f} | {x['peak_minus_before_mb']:.0f} | "
              f"{sum(x['step_s']) / len(x['step_s']):.1f} | {', '.join(f'{v:.6f}' for v in x['losses'])} |")
    print(f"\nmax |loss difference| {r['max_loss_diff']:.2e}; peak ratio {r['peak_ratio']}, "
          f"step-memory ratio {r['step_memory_ratio']}\n")
rows = sorted(out.glob("state_bytes_*_rank*.json"))
if rows:
    plain = [json.loads(p.read_text()) for p in rows if "_plain_" in p.name]
    base = plain[0]["bytes"]["total"] if plain else None
    print("| demo student | rank | params | grads | AdamW m, v | total | vs 1 process |")
    print("|---|---|---|---|---|---|---|")
    for p in rows:
        x = json.loads(p.read_text())
        b = x["bytes"]
        ratio = f"{b['total'] / base:.4f}x" if base else "-"
        print(f"| {x['mode']}, {x['world']} process(es) | {x['rank']} | {b['params']:,} | {b['grads']:,} | "
              f"{b['optimizer']:,} | {b['total']:,} | {ratio} |")
