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
`bench.lm._decode` and `_decode_teacher` with `synthetic=False` prefill for real (used by
`transmamba convert`'s report).
"""

from __future__ import annotations

import os

import torch

from transmamba.bench.harness import row, time_ms
from transmamba.bench.lm import _decode

STUDENT_CONFIG = "configs/convert/smollm2-switch-wide.yaml"


def build_pair(student_config: str = STUDENT_CONFIG):
    from transmamba.adapt.llama_to_switch import switch_config_from_teacher
    from transmamba.config import load_config
    from transmamba.convert import DEFAULTS
    from transmamba.models.hf_llama import load_teacher, teacher_spec
    from transmamba.models.lm import LM

    teacher, _ = load_teacher("smollm2")
    cfg = load_config(student_config, defaults=DEFAULTS)
    torch.manual_seed(0)
    student = LM(switch_config_from_teacher(teacher_spec(teacher), **cfg["student"])).eval()
    return teacher, student


def _teacher_kv_bytes(past) -> int:
    total = 0
    for layer in getattr(past, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def _decode_teacher(teacher, context: int, n_tokens: int, synthetic: bool = False):
    idx = torch.randint(0, teacher.config.vocab_size, (1, context))
    if synthetic:
        from transformers import DynamicCache

        from transmamba.models.hf_llama import teacher_spec

        spec, past = teacher_spec(teacher), DynamicCache()
        for i in range(spec["n_layers"]):
            kv = torch.randn(2, 1, spec["n_kv_heads"], context, spec["head_dim"])
            past.update(kv[0], kv[1], i)
    else:
        out = teacher(idx, use_cache=True)
        past = getattr(out, "cache", None) or out.past_key_values
    tok = idx[:, -1:]
    state = {"past": past, "pos": context}

    def one():
        o = teacher(tok, cache=state["past"], use_cache=True, position_ids=torch.tensor([[state["pos"]]]))
        state["past"], state["pos"] = getattr(o, "cache", None) or o.past_key_values, state["pos"] + 1

    ms = time_ms(one, reps=n_tokens, warmup=1, max_s=60)
    return ms, _teacher_kv_bytes(state["past"]) / 2**20


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
        ms_s, mb_s = _decode(student, C, n_decode, synthetic=True, warmup=1, max_s=60)
        ms_t, mb_t = _decode_teacher(teacher, C, n_decode, synthetic=True)
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
