"""init_top1 + layer-0 mixer cosine for each arch x mixer init x bias x decay (no training)."""
import copy, json, sys, time, torch
from transmamba.config import load_config
import numpy as np
import torch

from transmamba.evaluation.classification import evaluate_classifier as evaluate
from transmamba.recipes.vision import DISTILL_DEFAULTS, build_distill_run, load_data
from transmamba.adapt.distill import token_cosine
torch.set_num_threads(1)
combos = json.loads(sys.argv[1])
base = None
data = None
for c in combos:
    arch, mixer, bias, a0, L = c[:5]; lin = c[5] if len(c) > 5 else 0.0
    cfg = load_config(f"configs/vision/{arch}-fmnist.yaml", ["--init.layers", str(L), "--init.mixer", mixer,
                      "--init.mean_decay", str(a0), "--init.lin_scale", str(lin), "--student.bias", str(bias).lower()], defaults=DISTILL_DEFAULTS)
    torch.manual_seed(0); np.random.seed(0)  # as recipes.vision.distill: seed, load the data, build (so init_top1 matches result.json)
    data = load_data(cfg["data"])
    s, t, dl, rep = build_distill_run(cfg, data); ri = dl.calibrators[0].index
    s.eval()
    acc = evaluate(s, *data["test"], 500)[1]
    x = data["train"][0][:256]
    with torch.no_grad():
        h = t.embed(x); cos = []
        for i in range(2):
            tb, sb = t.blocks[i], s.blocks[i]
            ta = s.align_teacher_tokens(tb.attn(tb.norm1(h)))
            idx = None
            sh = s.align_teacher_tokens(h)
            # student residual is a cut of the teacher's: compare in the kept dims
            mo = sb.mixer(sb.norm1(sh[..., ri]))
            cos.append(round(token_cosine(mo, ta[..., ri]).item(), 3))
            h = tb(h)
    print(json.dumps(dict(arch=arch, mixer=mixer, bias=bias, a0=a0, layers=L, lin=lin, init_top1=acc, cos_l0_l1=cos)), flush=True)
