"""Shared setup of the SmolLM2 init experiments (ssm_calibration.py, student_width.py): the teacher,
8 calibration windows of 256 training tokens, the first 4 x 256 held-out tokens and `ppl`."""

import math

import numpy as np
import torch

from transmamba.teachers.to_switch import calibrate
from transmamba.data.text import eval_batches, token_ids
from transmamba.teachers.families import inspect_teacher
from transmamba.teachers.load import load_teacher

teacher, _ = load_teacher("smollm2")
spec = inspect_teacher(teacher)
train, val = token_ids("train", "smollm2"), token_ids("val", "smollm2")
starts = np.linspace(0, len(train) - 300, 8).astype(int)
calib = torch.from_numpy(np.stack([np.asarray(train[s:s + 256], dtype=np.int64) for s in starts]))
cal = calibrate(teacher, calib[:4])
x, y = next(eval_batches(val, 4, 256))
staggered = {"name": "staggered", "period": 8, "span": 256}


def ppl(model, P) -> float:
    """Held-out perplexity of `model` on (x, y) with TransPoints P."""
    with torch.no_grad():
        return math.exp(float(model(x, targets=y, transpoints=P)[1]))
