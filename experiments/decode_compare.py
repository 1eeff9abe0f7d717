"""Decode tok/s at a 4k context, saved students vs the SmolLM2 teacher, 3 rounds alternating them
(synthetic caches, 2 threads): python experiments/decode_compare.py STUDENT_DIR [...]"""
import sys, statistics, torch
from transmamba.student import load_model
from transmamba.models.hf_llama import load_teacher
from transmamba.evaluation.speed import decode_speed, teacher_decode_speed
torch.set_num_threads(2)
teacher, _ = load_teacher("smollm2")
students = {p: load_model(p) for p in sys.argv[1:]}
for B in (1, 8):
    ms = {p: [] for p in students} | {"teacher": []}
    for r in range(3):
        for p, s in students.items():
            ms[p].append(decode_speed(s, 4096, 8, synthetic=True, warmup=1, max_s=60, batch=B)[0])
        ms["teacher"].append(teacher_decode_speed(teacher, 4096, 8, synthetic=True, batch=B)[0])
    t = statistics.median(ms["teacher"])
    for p in students:
        m = statistics.median(ms[p])
        print(f"batch {B} {p}: {B*1e3/m:.1f} tok/s vs teacher {B*1e3/t:.1f} -> {t/m:.2f}x   rounds {[round(x) for x in ms[p]]} teacher {[round(x) for x in ms['teacher']]}")
