"""Reference: answer the VQA test questions symbolically from an image classifier's predicted class:
answer = ANSWERS[q, argmax classifier(x)]. Uses the same test questions as `transmamba train-vqa`."""
import json
import sys

import torch

from transmamba.config import load_config
from transmamba.models.vision import load_student
from transmamba.models.vit_weights import load_pretrained_vit
from transmamba.data.vqa_questions import question_bank, sample_questions
from transmamba.recipes.vqa import VQA_DEFAULTS
from transmamba.recipes.vision import load_data

torch.set_num_threads(1)
cfg = load_config("configs/multimodal/vqa-fmnist.yaml", None, defaults=VQA_DEFAULTS)
data = load_data(cfg["data"])
x, y = data["test"]
_, answers, is_attr = question_bank()
q, a = sample_questions(y.numpy(), answers, is_attr, attr_frac=cfg["vqa"]["attr_frac"], seed=cfg["vqa"]["seed"] + 1)
q, a = torch.from_numpy(q), torch.from_numpy(a)
A = torch.from_numpy(answers).long()
out = {}
for name in sys.argv[1:]:
    model = load_pretrained_vit(name) if "teacher" in name else load_student(name)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(-1) for i in range(0, len(x), 500)])
    ok = (A[q, pred] == a).float()
    att = torch.from_numpy(is_attr)[q]
    out[name] = {"image_top1": float((pred == y).float().mean()), "vqa_acc": float(ok.mean()),
                 "class_q": float(ok[~att].mean()), "attr_q": float(ok[att].mean())}
    print(name, out[name], flush=True)
json.dump(out, open("runs/multimodal/pipeline_ref.json", "w"), indent=1)
