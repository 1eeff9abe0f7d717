"""Which student width starts closest to SmolLM2? Calibrated-init perplexity per width cut.

Held-out perplexity before training of Switch students subcloned from SmolLM2-135M (all 30 layers,
SSM path calibrated on 8 training windows), on the first 4 x 256 held-out tokens, at P = L
(attention path), P = 0 (SSM path) and the staggered schedule (period 8, span 256).
Usage: .venv/bin/python experiments/convert_smollm2/student_width.py
"""

import torch

from transmamba.teachers.to_switch import init_from_teacher, plan_subclone, switch_config_from_teacher
from transmamba.adapt.ssm_calibration import calibrate_ssm_paths
from transmamba.models.lm import LM
from transmamba.modules.schedule import ATTENTION_ONLY

from _smollm2_setup import cal, calib, ppl, spec, staggered, teacher

print("| student cut | params (M) | ppl P=L | ppl P=0 | ppl staggered |")
print("|---|---|---|---|---|")
for kw in [dict(d_ff=1024), dict(d_ff=768), dict(n_heads=6, n_kv_heads=2, d_ff=1024),
           dict(d_model=480, d_ff=1280), dict(d_model=384, n_heads=6, n_kv_heads=2, d_ff=1024)]:
    cfg = switch_config_from_teacher(spec, schedule=staggered, switch_gate_bias=True, **kw)
    torch.manual_seed(0)
    s = LM(cfg).eval()
    init_from_teacher(s, teacher, plan_subclone(cal, spec, cfg), cal=cal)
    calibrate_ssm_paths(s, calib)
    n = sum(p.numel() for p in s.parameters()) / 1e6
    print(f"| {kw} | {n:.1f} | {ppl(s, ATTENTION_ONLY):.1f} | {ppl(s, 0):.0f} | {ppl(s, s.transpoints_for(256)):.0f} |",
          flush=True)
