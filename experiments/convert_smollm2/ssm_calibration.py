"""Does calibrating the SSM path (adapt/ssm_calibration.py) give converted students a better start?

Held-out perplexity at initialisation (no training) of Switch students subcloned from SmolLM2-135M,
with the SSM path at its own init vs calibrated on 8 training windows of 256 tokens; evaluated on the
first 4 x 256 held-out tokens at P = L (attention path), P = 0 (SSM path) and the staggered schedule.
Usage: .venv/bin/python experiments/convert_smollm2/ssm_calibration.py
"""

import time

import torch

from transmamba.teachers.to_switch import full_plan, init_from_teacher, plan_subclone, switch_config_from_teacher
from transmamba.adapt.ssm_calibration import calibrate_ssm_paths
from transmamba.models.lm import LM
from transmamba.modules.schedule import ATTENTION_ONLY

from _smollm2_setup import cal, calib, ppl, spec, staggered, teacher

print("| student | SSM path | ppl P=L | ppl P=0 | ppl staggered | mean cos(SSM, attention) | decays chosen |")
print("|---|---|---|---|---|---|---|")
for name, kw in [("full size", {}), ("d384 h6/2 ffn1024", dict(d_model=384, n_heads=6, n_kv_heads=2, d_ff=1024))]:
    cfg = switch_config_from_teacher(spec, schedule=staggered, switch_gate_bias=True, **kw)
    torch.manual_seed(0)
    s = LM(cfg).eval()
    plan = full_plan(spec) if not kw else plan_subclone(cal, spec, cfg)
    init_from_teacher(s, teacher, plan, cal=cal)
    stag = s.transpoints_for(256)
    print(f"| {name} | own init | {ppl(s, ATTENTION_ONLY):.1f} | {ppl(s, 0):.0f} | {ppl(s, stag):.0f} | | |", flush=True)
    t0 = time.time()
    rep = calibrate_ssm_paths(s, calib)
    cos_b = torch.stack([r["cos_before"] for r in rep]).mean()
    cos_a = torch.stack([r["cos_after"] for r in rep]).mean()
    dec = torch.cat([r["decay"] for r in rep])
    hist = {f"{float(a):.4g}": int((dec == a).sum()) for a in dec.unique()}
    print(f"| {name} | calibrated ({time.time() - t0:.0f} s) | {ppl(s, ATTENTION_ONLY):.1f} | {ppl(s, 0):.0f} | "
          f"{ppl(s, stag):.0f} | {cos_b:.3f} -> {cos_a:.3f} | {hist} |", flush=True)
