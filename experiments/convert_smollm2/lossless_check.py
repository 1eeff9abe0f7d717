"""Full-size SmolLM2-135M -> TransMamba-Switch conversion: max |logit difference| vs the teacher,
with every TransPoint beyond the sequence, and how outputs move as P is lowered (fp32).
Usage: .venv/bin/python experiments/convert_smollm2/lossless_check.py
"""

import torch

from transmamba.teachers.to_switch import full_plan, init_from_teacher, switch_config_from_teacher
from transmamba.data.text import eval_batches, token_ids
from transmamba.teachers.families import inspect_teacher
from transmamba.teachers.load import load_teacher
from transmamba.models.lm import LM

teacher, _ = load_teacher("smollm2")
spec = inspect_teacher(teacher)
student = LM(switch_config_from_teacher(spec)).eval()
init_from_teacher(student, teacher, full_plan(spec))
x, y = next(eval_batches(token_ids("val", "smollm2"), 2, 256))
with torch.no_grad():
    ref = teacher(x).logits
    print("| P (all layers) | max abs logit diff vs teacher | held-out CE (nats) |\n|---|---|---|")
    ce = torch.nn.functional.cross_entropy(ref.flatten(0, 1), y.flatten())
    print(f"| teacher | 0 | {ce:.4f} |")
    for P in (10**6, 256, 192, 128, 64, 0):
        out, loss = student(x, targets=y, transpoints=P)
        print(f"| {P if P < 10**6 else 'beyond L'} | {(out - ref).abs().max():.2e} | {loss:.4f} |")
