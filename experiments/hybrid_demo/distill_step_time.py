"""Seconds per distillation step of convert students on synthetic batches of the teacher cache's
shape (2 x 1024 tokens by default), 2 threads, bf16 as the recipe runs it; each the median of 3
steps after a warm-up, the configs alternating so a box that slows down hits them alike:
python experiments/hybrid_demo/distill_step_time.py CONFIG.yaml [...] [--batch 2 --seq_len 1024]"""
import argparse

import torch

from transmamba.bench.distill import build, step_fn
from transmamba.evaluation.speed import alternating_medians, time_ms
from transmamba.training import heap

ap = argparse.ArgumentParser()
ap.add_argument("configs", nargs="+")
ap.add_argument("--batch", type=int, default=2)
ap.add_argument("--seq_len", type=int, default=1024)
args = ap.parse_args()
torch.set_num_threads(2)
heap.retain_freed_memory(True)
steps = []
for path in args.configs:
    student, cfg, layer_map, batch = build(path, batch_size=args.batch, seq_len=args.seq_len)
    one = step_fn(student, cfg, layer_map, batch, amp=cfg["train"]["amp"], reference=False)
    one()  # warm-up: optimizer state, autocast caches, heap
    steps.append((path, student.cfg.schedule, one))

medians = alternating_medians([(lambda one=one: (time_ms(one, reps=1, warmup=0),)) for _, _, one in steps], 3)
for (path, schedule, _), (ms,) in zip(steps, medians):
    print(f"{path}: {schedule}: {ms / 1e3:.2f} s/step, {args.batch * args.seq_len * 1e3 / ms:.0f} tok/s")
