"""Perplexity vs TransPoint at inference for converted Switch students (issue 6's trade-off curve).

Every layer's TransPoint set to P in {0, 128, 512, L}, on held-out 1024-token windows (longer than
the 256-token training windows, so P = 512 is inside the sequence); the teacher on the same windows.
Writes <run>/transpoint_sweep_1024.json and a plot next to it.
Usage: .venv/bin/python experiments/convert_smollm2/transpoint_sweep.py runs/convert-v2/full [more runs...] [--windows 8]
"""

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from transmamba.hf.student import load_model
from transmamba.recipes.convert import plot_transpoint_sweep
from transmamba.data.text import eval_batches, token_ids
from transmamba.teachers.load import load_teacher

p = argparse.ArgumentParser()
p.add_argument("runs", nargs="+")
p.add_argument("--seq_len", type=int, default=1024)
p.add_argument("--windows", type=int, default=8)
p.add_argument("--transpoints", type=int, nargs="+", default=[0, 128, 512])
args = p.parse_args()
L = args.seq_len
val = token_ids("val", "smollm2")
batches = list(eval_batches(val, 2, L, max_windows=args.windows))


def ppl(forward) -> float:
    tot, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            tot += float(F.cross_entropy(forward(x).flatten(0, 1).float(), y.flatten(), reduction="sum"))
            n += y.numel()
    return math.exp(tot / n)


teacher, _ = load_teacher("smollm2")
t_ppl = ppl(lambda x: teacher(x).logits)
print(f"teacher: {t_ppl:.2f} on {args.windows} x {L} tokens", flush=True)
for run in args.runs:
    student = load_model(Path(run) / "student")
    sweep = {}
    for P in args.transpoints + [L]:
        sweep[P] = ppl(lambda x: student(x, transpoints=P)[0])
        print(f"{run}: P={P}: {sweep[P]:.2f}", flush=True)
    sched = ppl(lambda x: student(x)[0])
    res = {"seq_len": L, "windows": args.windows, "teacher_ppl": t_ppl, "sweep": sweep,
           "schedule_ppl": sched, "schedule": student.transpoints_for(L)}
    (Path(run) / f"transpoint_sweep_{L}.json").write_text(json.dumps(res, indent=2))
    plot_transpoint_sweep({str(k): v for k, v in sweep.items()}, Path(run) / f"transpoint_tradeoff_{L}.png",
                          f"{Path(run).name} ({L}-token windows)")
    print(f"{run}: own schedule {sched:.2f}", flush=True)
