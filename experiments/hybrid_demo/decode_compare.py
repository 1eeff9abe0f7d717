"""Decode tok/s at a 4k context, saved students vs the SmolLM2 teacher, 3 rounds alternating them
(synthetic caches, 2 threads): python experiments/hybrid_demo/decode_compare.py STUDENT_DIR [...]"""
import sys

import torch

from transmamba.evaluation.speed import alternating_medians, decode_speed, teacher_decode_speed
from transmamba.teachers.load import load_teacher
from transmamba.hf.student import load_model

torch.set_num_threads(2)
teacher, _ = load_teacher("smollm2")
paths = sys.argv[1:]
students = [load_model(p) for p in paths]
for B in (1, 8):
    *ms_s, (ms_t,) = alternating_medians(
        [(lambda s=s: decode_speed(s, 4096, 8, synthetic=True, warmup=1, max_s=60, batch=B)[:1]) for s in students]
        + [lambda: teacher_decode_speed(teacher, 4096, 8, synthetic=True, batch=B)[:1]], 3)
    for p, (ms,) in zip(paths, ms_s):
        print(f"batch {B} {p}: {B * 1e3 / ms:.1f} tok/s vs teacher {B * 1e3 / ms_t:.1f} -> {ms_t / ms:.2f}x")
