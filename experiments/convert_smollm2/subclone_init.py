"""Which cuts of SmolLM2-135M survive subcloning? Held-out perplexity of Switch students at init.

Every student is subcloned from the teacher (calibration: 4 training windows of 256 tokens) and
evaluated on the first 4 x 256 held-out tokens, with every TransPoint beyond the sequence (pure
attention path) and with P = 0 (pure SSM path, whose z/dt/A are untrained).
Usage: .venv/bin/python experiments/convert_smollm2/subclone_init.py
"""

import math

import numpy as np
import torch

from transmamba.teachers.to_switch import (calibrate, full_plan, init_from_teacher, layer_map_for,
                                              plan_subclone, switch_config_from_teacher)
from transmamba.data.text import eval_batches, token_ids
from transmamba.teachers.families import inspect_teacher
from transmamba.teachers.load import load_teacher
from transmamba.models.lm import LM

teacher, _ = load_teacher("smollm2")
spec = inspect_teacher(teacher)
train, val = token_ids("train", "smollm2"), token_ids("val", "smollm2")
starts = np.linspace(0, len(train) - 300, 4).astype(int)
cal = calibrate(teacher, torch.from_numpy(np.stack([np.asarray(train[s:s + 256], dtype=np.int64) for s in starts])))
x, y = next(eval_batches(val, 4, 256))


def ppl(model, P):
    with torch.no_grad():
        return math.exp(float(model(x, targets=y, transpoints=P)[1]))


with torch.no_grad():
    print(f"| teacher | | {math.exp(float(torch.nn.functional.cross_entropy(teacher(x).logits.flatten(0, 1), y.flatten()))):.1f} | |")
cases = [(dict(n_layers=30), "uniform"), (dict(d_ff=1024), "uniform"), (dict(n_heads=6, n_kv_heads=2), "uniform"),
         (dict(d_model=384, n_heads=9, n_kv_heads=3, d_ff=1536), "uniform"),
         (dict(n_layers=20), "uniform"), (dict(n_layers=15), "uniform"), (dict(n_layers=15), "first"),
         (dict(n_layers=10), "uniform"), (dict(n_layers=8), "uniform"),
         (dict(n_layers=8, d_model=384, n_heads=6, n_kv_heads=2, d_ff=1024), "uniform")]
print("| student cut | layer map | ppl, attention path | ppl, SSM path (P=0) |\n|---|---|---|---|")
for kw, how in cases:
    cfg = switch_config_from_teacher(spec, **kw)
    torch.manual_seed(0)
    s = LM(cfg).eval()
    full = all(getattr(cfg, k) == spec[v] for k, v in (("d_model", "d_model"), ("n_heads", "n_heads"), ("d_ff", "d_ff")))
    plan = full_plan(spec) if full else plan_subclone(cal, spec, cfg)
    lmap = layer_map_for(cfg.n_layers, 30, how) if how != "first" else list(range(cfg.n_layers - 1)) + [29]
    init_from_teacher(s, teacher, plan, layer_map=lmap, cal=cal)
    print(f"| {kw} | {how} | {ppl(s, 10**6):.1f} | {ppl(s, 0):.1f} |", flush=True)
