"""`transmamba bench convert`: the converted TransMamba-Switch student vs its teacher (SmolLM2-135M).

Rows: prefill time of L tokens (batch 1), and decoding ms/token at a context of L tokens, with the
memory the decoding caches hold. ours = the student of `configs/convert/smollm2-switch-wide.yaml`
(or `--student CONFIG`; architecture only: speed does not depend on the weights), peer = the teacher through Hugging
Face transformers (its KV cache). Past its TransPoints the student's layers keep a constant-size
SSM state instead of a growing KV cache.

Decoding rows fill both models' caches to the context length directly (random keys/values for
the teacher's KV cache; for the student, the SSM state of layers past their TransPoint and KV
entries for the others) instead of prefilling: the cost of one decoding step depends on the
cache's sizes, not its contents, and an 8k-token teacher prefill costs minutes on this CPU.
`transmamba.evaluation.speed.decode_speed` and `teacher_decode_speed` with `synthetic=False`
prefill for real (used by `transmamba convert`'s report).
"""

from __future__ import annotations

import os

import torch

from transmamba.bench.harness import row
from transmamba.evaluation.speed import decode_speed, teacher_decode_speed, time_ms

STUDENT_CONFIG = "configs/convert/smollm2-switch-wide.yaml"


def build_pair(student_config: str = STUDENT_CONFIG):
    from transmamba.teachers.families import inspect_teacher
    from transmamba.teachers.to_switch import switch_config_from_teacher
    from transmamba.config import load_config
    from transmamba.recipes.convert import DEFAULTS
    from transmamba.teachers.load import load_teacher
    from transmamba.models.lm import LM

    teacher, _ = load_teacher("smollm2")
    cfg = load_config(student_config, defaults=DEFAULTS)
    torch.manual_seed(0)
    student = LM(switch_config_from_teacher(inspect_teacher(teacher.config), **cfg["student"])).eval()
    return teacher, student


def rows(prefill_Ls=(4096, 16384), decode_contexts=(1024, 8192), n_decode=8, reps=1,
         student_config: str = STUDENT_CONFIG) -> list[dict]:
    teacher, student = build_pair(student_config)
    out = []
    for L in prefill_Ls:
        idx = torch.randint(0, student.cfg.vocab_size, (1, L))
        with torch.no_grad():
            t_s = time_ms(lambda: student(idx), reps=reps, warmup=0)
            t_t = time_ms(lambda: teacher(idx, use_cache=False), reps=reps, warmup=0)
        out.append(row("convert prefill", L, t_s, t_t, tok_per_s_ours=round(L / t_s * 1e3, 1),
                       tok_per_s_peer=round(L / t_t * 1e3, 1), student=student_config))
    for C in decode_contexts:
        ms_s, mb_s = decode_speed(student, C, n_decode, synthetic=True, warmup=1, max_s=60)
        ms_t, mb_t = teacher_decode_speed(teacher, C, n_decode, synthetic=True)
        out.append(row("convert decode ms/token", C, ms_s, ms_t, tok_per_s_ours=round(1e3 / ms_s, 2),
                       tok_per_s_peer=round(1e3 / ms_t, 2), ours_cache_mb=round(mb_s, 2), peer_cache_mb=round(mb_t, 2),
                       student=student_config))
    return out


def run(quick: bool = False, student: str | None = None) -> list[dict]:
    """`student`: a convert config (default `STUDENT_CONFIG`); TM_PREFILL_LS="4096,16384" sets the
    prefill lengths."""
    student = student or STUDENT_CONFIG
    if not os.path.exists(student):
        raise FileNotFoundError(f"student config {student!r} not found")
    if quick:
        return rows(prefill_Ls=(1024,), decode_contexts=(1024,), n_decode=4, student_config=student)
    Ls = tuple(int(x) for x in os.environ.get("TM_PREFILL_LS", "4096,16384").split(",") if x)
    return rows(prefill_Ls=Ls, student_config=student)
