"""Decode ms/step at a 4k context, the Switch step with its step ops' references (the code before
session 15) vs the fast ops, in one process, rounds alternating (synthetic caches):

    python experiments/hybrid_demo/decode_step_ab.py STUDENT_DIR [--threads 2] [--batch 1] [--rounds 5]
"""
import argparse

import torch

import transmamba.modules.switch as switch
from transmamba.evaluation.speed import alternating_medians, decode_speed
from transmamba.ops.conv1d import causal_conv1d_step
from transmamba.ops.decode_attention import decode_attention, decode_attention_ref
from transmamba.ops.ssd import ssd_step, ssd_step_ref
from transmamba.hf.student import load_model

ap = argparse.ArgumentParser()
ap.add_argument("student")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--rounds", type=int, default=5)
args = ap.parse_args()
torch.set_num_threads(args.threads)
model = load_model(args.student).eval()

OPS = {  # name -> (reference, fast)
    "ssd_step": (lambda *a, check=True, **k: ssd_step_ref(*a, **k), ssd_step),
    "causal_conv1d_step": (lambda *a, check=True, **k: causal_conv1d_step(*a, **k), causal_conv1d_step),
    "decode_attention": (decode_attention_ref, decode_attention),
}


def run(fast: bool):
    for name, pair in OPS.items():
        setattr(switch, name, pair[fast])
    return decode_speed(model, 4096, 8, synthetic=True, warmup=1, max_s=60, batch=args.batch)[:1]


(ref,), (fast,) = alternating_medians([lambda: run(False), lambda: run(True)], args.rounds)
print(f"threads {args.threads} batch {args.batch}: references {ref:.1f} ms, fast {fast:.1f} ms -> {ref / fast:.2f}x")
